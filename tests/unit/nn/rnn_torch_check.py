#!/usr/bin/env python3
# Loads what test_rnn_layers.cpp wrote (a safetensors file: an hpdl LSTM/GRU's
# parameters under their PyTorch names, the input and initial states, the
# weights of the loss, and hpdl's outputs and gradients, all float64), runs the
# same network in torch.nn.LSTM / torch.nn.GRU and compares every tensor.
# Prints one line per tensor with the max abs difference; exits 1 on any
# difference above 1e-10, 77 when torch is missing.
import sys

from torch_check_io import load, torch  # exits 77 when torch is missing

T, meta = load(sys.argv[1])

lstm = meta["cell"] == "lstm"
cls = torch.nn.LSTM if lstm else torch.nn.GRU
m = cls(int(meta["input_size"]), int(meta["hidden_size"]), num_layers=int(meta["num_layers"]),
        bidirectional=meta["bidirectional"] == "1", batch_first=meta["batch_first"] == "1").double()
m.load_state_dict({k[len("param."):]: v for k, v in T.items() if k.startswith("param.")})
x = T["x"].requires_grad_()
h0 = T["h0"].requires_grad_()
if lstm:
    c0 = T["c0"].requires_grad_()
    out, (hn, cn) = m(x, (h0, c0))
else:
    out, hn = m(x, h0)
loss = (out * T["w_out"]).sum() + (hn * T["w_h_n"]).sum()
if lstm:
    loss = loss + (cn * T["w_c_n"]).sum()
loss.backward()

got = {"out": out, "h_n": hn, "dx": x.grad, "dh0": h0.grad}
if lstm:
    got.update({"c_n": cn, "dc0": c0.grad})
for name, p in m.named_parameters():
    got["grad." + name] = p.grad
bad = 0
for name in sorted(got):
    if "hpdl." + name not in T:
        print(f"{name}: missing from the hpdl file")
        bad += 1
        continue
    d = (got[name].detach() - T["hpdl." + name]).abs().max().item()
    ok = d <= 1e-10
    bad += not ok
    print(f"{name}: max |torch - hpdl| = {d:.3e}{'' if ok else '  <-- differs'}")
sys.exit(1 if bad else 0)

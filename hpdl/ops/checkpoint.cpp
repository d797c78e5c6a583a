// Activation checkpointing: the forward runs a segment without a graph, the
// backward runs it again with one and backpropagates through it. The state a
// recompute must see as the forward saw it (dropout generators, autocast) is
// saved at the forward; the state it must not touch twice (BatchNorm's running
// statistics) is guarded by checkpoint_recomputing().
#include "hpdl/ops/checkpoint.h"

#include <exception>
#include <memory>
#include <unordered_set>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/node.h"
#include "hpdl/ops/autocast.h"

namespace hpdl {
namespace {

struct GeneratorState {
  Generator* gen;
  uint64_t seed, offset;
};

// The generators a checkpointed forward drew from, as they were before its first draw.
struct ForwardRecord {
  std::vector<GeneratorState> generators;
};

thread_local ForwardRecord* t_forward = nullptr;
thread_local int t_recomputing = 0;

class ForwardScope {
 public:
  explicit ForwardScope(ForwardRecord* r) : prev_(t_forward) { t_forward = r; }
  ~ForwardScope() { t_forward = prev_; }
  ForwardScope(const ForwardScope&) = delete;
  ForwardScope& operator=(const ForwardScope&) = delete;

 private:
  ForwardRecord* prev_;
};

// While a segment is recomputed: BatchNorm sees checkpoint_recomputing(), and
// dropout's draws are not noted for an enclosing forward (there is none: a
// checkpoint nested in the segment records its own when it runs now).
class RecomputeScope {
 public:
  RecomputeScope() : prev_(t_forward) { t_forward = nullptr, ++t_recomputing; }
  ~RecomputeScope() { t_forward = prev_, --t_recomputing; }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  ForwardRecord* prev_;
};

// Sets the generators to the forward's states and, on destruction (also after
// a throw), back to where they were before the recompute.
class GeneratorReplay {
 public:
  explicit GeneratorReplay(const std::vector<GeneratorState>& forward) {
    for (const GeneratorState& s : forward) {
      now_.push_back({s.gen, s.gen->seed(), s.gen->offset()});
      s.gen->set_state(s.seed, s.offset);
    }
  }
  ~GeneratorReplay() {
    for (const GeneratorState& s : now_) s.gen->set_state(s.seed, s.offset);
  }
  GeneratorReplay(const GeneratorReplay&) = delete;
  GeneratorReplay& operator=(const GeneratorReplay&) = delete;

 private:
  std::vector<GeneratorState> now_;
};

// Runs the caller's after_backward when the node's backward leaves, however it leaves.
class AfterBackward {
 public:
  explicit AfterBackward(const std::function<void()>& fn) : fn_(fn) {}
  ~AfterBackward() noexcept(false) {
    if (!fn_) return;
    if (std::uncaught_exceptions() > 0) {
      try {
        fn_();
      } catch (...) {  // the error already in flight is the one to report
      }
    } else {
      fn_();
    }
  }
  AfterBackward(const AfterBackward&) = delete;
  AfterBackward& operator=(const AfterBackward&) = delete;

 private:
  const std::function<void()>& fn_;
};

// True when some node reachable from `roots` is the target of one of `edges`.
bool reaches_any(const std::vector<Tensor>& roots, const std::vector<Edge>& edges) {
  std::unordered_set<Node*> targets;
  for (const Edge& e : edges)
    if (e.fn) targets.insert(e.fn.get());
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (const Tensor& r : roots) {
    Edge e = gradient_edge(r);
    if (e.fn && seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (targets.count(n)) return true;
    for (const Edge& e : n->next)
      if (e.fn && seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
  }
  return false;
}

}  // namespace

bool checkpoint_recomputing() { return t_recomputing > 0; }

void checkpoint_note_generator(Generator& gen) {
  if (t_forward == nullptr) return;
  for (const GeneratorState& s : t_forward->generators)
    if (s.gen == &gen) return;
  t_forward->generators.push_back({&gen, gen.seed(), gen.offset()});
}

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs) {
  return checkpoint(fn, inputs, nullptr);
}

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               std::function<void()> after_backward) {
  HPDL_CHECK(fn != nullptr, "checkpoint: no function given");
  if (!grad_enabled()) return fn(inputs);

  auto record_of_forward = std::make_shared<ForwardRecord>();
  std::vector<Tensor> outputs;
  {
    ForwardScope scope(record_of_forward.get());
    NoGradGuard no_grad;
    outputs = fn(inputs);
  }
  HPDL_CHECK(!outputs.empty(), "checkpoint: the segment returned no outputs");
  std::vector<Tensor*> out_ptrs;
  for (size_t i = 0; i < outputs.size(); ++i) {
    HPDL_CHECK(outputs[i].defined(), "checkpoint: output {} of the segment is undefined", i);
    HPDL_CHECK(dtype_is_float(outputs[i].dtype()), "checkpoint: output {} of the segment is {} {}; a checkpointed "
               "segment returns floating-point tensors only (compute integer results outside it)", i,
               dtype_name(outputs[i].dtype()), shape_str(outputs[i].shape()));
    outputs[i] = outputs[i].detach();  // a new handle: an output that is an input keeps the input's history
    out_ptrs.push_back(&outputs[i]);
  }

  // Saved for the recompute: the inputs' values (not their history), which of
  // them need a gradient, the output shapes, the autocast dtype and the generators.
  // The inputs' values are checked when the backward reads them (design decision 73); the
  // parameters inside the segment are read afresh by the recompute, so a write into one of
  // them between the forward and the backward is not seen (as in PyTorch).
  std::vector<SavedTensor> saved;
  std::vector<bool> wants;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& in = inputs[i];
    saved.emplace_back(in.defined() ? in.detach() : Tensor(), "input", static_cast<int>(i));
    wants.push_back(in.defined() && in.requires_grad());
  }
  std::vector<Shape> shapes;
  for (const Tensor& o : outputs) shapes.push_back(o.shape());
  const DType autocast = autocast_dtype();

  record(
      "checkpoint", inputs, out_ptrs,
      [fn, saved, wants, shapes, autocast, record_of_forward, after_backward](const std::vector<Tensor>& grads) {
        AfterBackward done(after_backward);
        HPDL_CHECK(!grad_enabled(), "checkpoint: create_graph (higher-order gradients) through a checkpointed "
                   "segment is not supported; compute this part without checkpoint()");
        const std::vector<Edge>* capture = current_capture_edges();
        std::vector<Tensor> dinputs(saved.size());

        // Recompute: detached copies of the inputs as fresh leaves, grad mode on.
        std::vector<Tensor> leaves;
        for (size_t i = 0; i < saved.size(); ++i) {
          Tensor leaf = saved[i].defined() ? saved[i].get().detach() : Tensor();
          if (wants[i]) leaf.set_requires_grad();
          leaves.push_back(leaf);
        }
        std::vector<Tensor> outs;
        {
          GeneratorReplay replay(record_of_forward->generators);
          RecomputeScope recomputing;
          AutocastScope autocast_scope(autocast);
          EnableGradGuard grad_on(true);
          outs = fn(leaves);
        }
        HPDL_CHECK(outs.size() == shapes.size(), "checkpoint: the recompute returned {} outputs, the forward {}; "
                   "the segment must compute the same thing both times", outs.size(), shapes.size());
        std::vector<Tensor> roots, droots;
        for (size_t i = 0; i < outs.size(); ++i) {
          HPDL_CHECK(outs[i].defined() && outs[i].shape() == shapes[i], "checkpoint: recomputed output {} has "
                     "shape {}, the forward's {}; the segment must compute the same thing both times", i,
                     outs[i].defined() ? shape_str(outs[i].shape()) : "undefined", shape_str(shapes[i]));
          if (i < grads.size() && grads[i].defined() && outs[i].requires_grad()) {
            roots.push_back(outs[i]);
            droots.push_back(grads[i]);
          }
        }
        if (roots.empty()) return dinputs;

        if (capture == nullptr) {
          // backward(): parameters inside the segment accumulate (and fire their
          // hooks) here; the inputs' gradients land in the leaves' .grad.
          run_backward(roots, droots, /*retain_graph=*/false, /*create_graph=*/false);
          for (size_t i = 0; i < leaves.size(); ++i)
            if (wants[i]) dinputs[i] = leaves[i].grad();
          return dinputs;
        }
        // grad(): no .grad may change, so only the inputs' gradients are taken;
        // a grad() with respect to something used inside the segment cannot be answered.
        HPDL_CHECK(!reaches_any(roots, *capture), "checkpoint: grad() asks for the gradient of a tensor used "
                   "inside a checkpointed segment without being one of its inputs; pass it to checkpoint() as an "
                   "input, or use backward()");
        std::vector<Tensor> diff;
        std::vector<size_t> where;
        for (size_t i = 0; i < leaves.size(); ++i)
          if (wants[i]) diff.push_back(leaves[i]), where.push_back(i);
        if (diff.empty()) return dinputs;
        std::vector<Tensor> g = grad(roots, diff, droots, false, false, /*allow_unused=*/true);
        for (size_t k = 0; k < where.size(); ++k) dinputs[where[k]] = g[k];
        return dinputs;
      });
  return outputs;
}

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x) {
  HPDL_CHECK(fn != nullptr, "checkpoint: no function given");
  return checkpoint([fn](const std::vector<Tensor>& in) { return std::vector<Tensor>{fn(in[0])}; }, {x})[0];
}

}  // namespace hpdl

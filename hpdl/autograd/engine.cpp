// The backward engine. Nodes run in decreasing creation order, which is a
// valid topological order of a define-by-run graph (a node is created after
// every node that produced its inputs); a node runs once all of its
// consumers have delivered their gradients.
#include "hpdl/autograd/engine.h"

#include <queue>
#include <unordered_map>
#include <unordered_set>

namespace hpdl {

Tensor autograd_add(const Tensor& a, const Tensor& b);

namespace {

thread_local const std::vector<Edge>* t_capture = nullptr;

// Sets t_capture for one run; nested runs (a node that runs a backward of its own) restore it.
class CaptureScope {
 public:
  explicit CaptureScope(const std::vector<Edge>* edges) : prev_(t_capture) { t_capture = edges; }
  ~CaptureScope() { t_capture = prev_; }
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;

 private:
  const std::vector<Edge>* prev_;
};

struct Task {
  Node* node;
  bool operator<(const Task& o) const { return node->sequence < o.node->sequence; }
};

struct GraphRun {
  std::unordered_map<Node*, int> dependencies;                 // consumers still to deliver
  std::unordered_map<Node*, std::vector<Tensor>> buffers;      // gradients per output slot
  std::unordered_map<Node*, std::shared_ptr<Node>> keep;       // owning refs while running

  void discover(const std::vector<std::shared_ptr<Node>>& roots) {
    std::vector<Node*> stack;
    std::unordered_set<Node*> seen;
    for (auto& r : roots)
      if (r && seen.insert(r.get()).second) stack.push_back(r.get()), keep[r.get()] = r;
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (const Edge& e : n->next) {
        if (!e.fn) continue;
        dependencies[e.fn.get()] += 1;
        if (seen.insert(e.fn.get()).second) {
          keep[e.fn.get()] = e.fn;
          stack.push_back(e.fn.get());
        }
      }
    }
  }

  void deliver(Node* n, uint32_t slot, const Tensor& g) {
    auto& buf = buffers[n];
    if (buf.size() < n->num_outputs) buf.resize(n->num_outputs);
    if (!g.defined()) return;
    buf[slot] = buf[slot].defined() ? autograd_add(buf[slot], g) : g;
  }
};

// Runs the graph. When `capture` is non-null, gradients arriving at those
// edges are stored there instead of flowing on, and leaves are not touched.
void execute(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_outputs, bool retain_graph,
             bool create_graph, const std::vector<Edge>* capture, std::vector<Tensor>* captured) {
  HPDL_CHECK(grad_outputs.empty() || grad_outputs.size() == roots.size(),
             "backward: {} gradients given for {} outputs", grad_outputs.size(), roots.size());
  EnableGradGuard mode(create_graph);
  CaptureScope capture_scope(capture);
  GraphRun run;
  std::vector<std::shared_ptr<Node>> root_nodes;
  std::vector<Edge> root_edges;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    HPDL_CHECK(r.defined() && r.requires_grad(), "backward: output {} does not require grad (was it computed "
               "under NoGradGuard, or from tensors without requires_grad?)", i);
    Edge e = gradient_edge(r);
    root_edges.push_back(e);
    root_nodes.push_back(e.fn);
  }
  run.discover(root_nodes);
  std::unordered_map<Node*, std::vector<std::pair<uint32_t, size_t>>> capture_at;
  if (capture) {
    for (size_t i = 0; i < capture->size(); ++i)
      if ((*capture)[i].fn) capture_at[(*capture)[i].fn.get()].push_back({(*capture)[i].input_nr, i});
  }
  for (size_t i = 0; i < roots.size(); ++i) {
    Tensor g = grad_outputs.empty() ? Tensor() : grad_outputs[i];
    if (!g.defined()) {
      HPDL_CHECK(roots[i].numel() == 1, "backward: output {} has shape {}; pass a gradient for non-scalar outputs",
                 i, shape_str(roots[i].shape()));
      g = Tensor::ones(roots[i].shape(), roots[i].dtype(), roots[i].device());
    }
    HPDL_CHECK(g.shape() == roots[i].shape(), "backward: gradient {} for output {} of shape {}",
               shape_str(g.shape()), i, shape_str(roots[i].shape()));
    run.deliver(root_edges[i].fn.get(), root_edges[i].input_nr, g);
  }
  std::priority_queue<Task> ready;
  for (auto& r : root_nodes)
    if (r && run.dependencies[r.get()] == 0) ready.push({r.get()});
  std::unordered_set<Node*> queued;
  while (!ready.empty()) {
    Node* n = ready.top().node;
    ready.pop();
    if (!queued.insert(n).second) continue;
    std::vector<Tensor> grads = std::move(run.buffers[n]);
    grads.resize(n->num_outputs);
    run.buffers.erase(n);
    auto cap = capture_at.find(n);
    if (cap != capture_at.end()) {
      for (auto [slot, idx] : cap->second) (*captured)[idx] = grads[slot];
    }
    std::vector<Tensor> input_grads;
    bool is_leaf_sink = dynamic_cast<AccumulateGrad*>(n) != nullptr;
    bool any = false;
    for (auto& g : grads) any = any || g.defined();
    if (!(capture && is_leaf_sink) && any) input_grads = n->apply(grads);
    if (!retain_graph) n->release();
    for (size_t i = 0; i < n->next.size(); ++i) {
      const Edge& e = n->next[i];
      if (!e.fn) continue;
      if (i < input_grads.size()) run.deliver(e.fn.get(), e.input_nr, input_grads[i]);
      if (--run.dependencies[e.fn.get()] == 0) ready.push({e.fn.get()});
    }
  }
}

}  // namespace

const std::vector<Edge>* current_capture_edges() { return t_capture; }

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_outputs, bool retain_graph,
                  bool create_graph) {
  execute(roots, grad_outputs, retain_graph || create_graph, create_graph, nullptr, nullptr);
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph, bool create_graph,
                         bool allow_unused) {
  std::vector<Edge> edges;
  for (size_t i = 0; i < inputs.size(); ++i) {
    HPDL_CHECK(inputs[i].defined() && inputs[i].requires_grad(), "grad: input {} does not require grad", i);
    edges.push_back(gradient_edge(inputs[i]));
  }
  std::vector<Tensor> result(inputs.size());
  execute(outputs, grad_outputs, retain_graph || create_graph, create_graph, &edges, &result);
  for (size_t i = 0; i < result.size(); ++i) {
    HPDL_CHECK(allow_unused || result[i].defined(), "grad: output does not depend on input {} (pass "
               "allow_unused=true to get an undefined gradient instead)", i);
    if (result[i].defined() && !create_graph) result[i] = result[i].detach();
  }
  return result;
}

}  // namespace hpdl

// hpdl export --checkpoint RUN_DIR [--best] --output model.onnx: the run's model as an
// ONNX graph (hpdl/train/onnx_export.h) that takes what `hpdl predict` reads,
// float32 pixels in [0, 1], with the run's input normalization inside the graph.
// A regression run (train.loss = mse, l1, huber) exports its k outputs as 'values'.
#include <fmt/ranges.h>

#include <cstdio>

#include "apps/hpdl/commands.h"
#include "apps/hpdl/inputs.h"
#include "hpdl/train/objective.h"
#include "hpdl/train/onnx_export.h"

namespace hpdl::cli {

void register_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Export a run's model as ONNX (opset 13) for inference elsewhere");
  struct Opts {
    CheckpointArg checkpoint;
    std::string config, output;
  };
  auto o = std::make_shared<Opts>();
  add_checkpoint_options(cmd, o->checkpoint);
  cmd->add_option("--config", o->config, "TOML config (default: RUN_DIR/config.toml)");
  cmd->add_option("--output,-o", o->output, "The .onnx file to write (atomically)")->required();
  cmd->callback([o] {
    auto m = load_inference_model(o->checkpoint, o->config);
    // A regression model's outputs are the predicted values themselves: the graph output is
    // named 'values' (no softmax is meant to follow), and its inputs are the features as
    // `hpdl predict` reads them rather than pixels.
    const bool regression = train::Objective(m.cfg).regression();
    train::OnnxExportOptions opt;
    opt.sample = m.sample;
    if (regression) opt.output_name = "values";
    if (m.cfg.data.normalize) opt.mean = m.cfg.data.mean, opt.std = m.cfg.data.std;
    const std::string dims = fmt::format("{}", fmt::join(m.sample, ", "));
    const char* what = regression ? "values" : "logits";
    opt.doc = fmt::format("hpdl {} model '{}' from {}; input 'input': float32 [N, {}] {}{}; output '{}'{}",
                          HPDL_VERSION, m.cfg.model.name, o->checkpoint.weights(), dims,
                          regression ? "features as hpdl predict reads them" : "pixels in [0, 1]",
                          m.cfg.data.normalize ? ", normalized inside the graph" : "", what,
                          regression ? fmt::format(" (the regression outputs of train.loss = {})", m.cfg.train.loss)
                                     : std::string());
    auto model = train::export_onnx(*m.model, opt);
    io::onnx::write_model(o->output, model);
    std::printf("wrote %s: %s, input [N, %s] float32, output [N, %lld] %s, %zu nodes, %zu initializers\n",
                o->output.c_str(), m.cfg.model.name.c_str(),
                dims.c_str(),
                static_cast<long long>(model.graph.outputs[0].dims.back().value), what, model.graph.nodes.size(),
                model.graph.initializers.size());
  });
}

}  // namespace hpdl::cli

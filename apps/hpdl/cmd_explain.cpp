// hpdl explain --checkpoint RUN_DIR INPUT...: why the trained model classifies
// each input as it does. For every sample, every chosen method (saliency,
// integrated gradients, Grad-CAM, occlusion; see hpdl/explain/explain.h)
// writes a heatmap PNG (input | map over it) and, per input file and method,
// the raw maps as an .npy [N, H, W] (float32) for further analysis. One line
// per sample on stdout: file, index, predicted class and probability, the
// explained class, and the integrated gradients' completeness check.
#include <cstdio>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>

#include "apps/hpdl/commands.h"
#include "apps/hpdl/inputs.h"
#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"
#include "hpdl/explain/explain.h"
#include "hpdl/ops/ops.h"

namespace hpdl::cli {
namespace {

const std::vector<std::string> kMethods = {"saliency", "ig", "gradcam", "occlusion"};

std::vector<std::string> parse_methods(const std::string& list) {
  if (list == "all") return kMethods;
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string m; std::getline(ss, m, ',');) {
    HPDL_CHECK(std::find(kMethods.begin(), kMethods.end(), m) != kMethods.end(),
               "explain --method: unknown method '{}'; choose from saliency, ig, gradcam, occlusion or all", m);
    out.push_back(m);
  }
  HPDL_CHECK(!out.empty(), "explain --method: no method given");
  return out;
}

// "t10k-images-idx3-ubyte.gz" -> "t10k-images-idx3-ubyte"; "shoe.png" -> "shoe".
std::string stem_of(const std::string& file) {
  std::filesystem::path p(file);
  if (p.extension() == ".gz") p = p.stem();
  return p.stem().string();
}

void write_maps(const std::filesystem::path& path, const Tensor& maps) {
  auto v = maps.contiguous().to_vector<float>();
  data::write_npy(path, DType::f32, maps.shape(), v.data());
}

}  // namespace

void register_explain(CLI::App& app) {
  auto* cmd = app.add_subcommand("explain", "Explain a trained model's predictions as heatmaps (AI forensics)");
  struct Opts {
    std::string checkpoint, config, methods = "all", out = "explain", layer;
    std::vector<std::string> inputs;
    int64_t first = 0, limit = 8, target = -1, steps = 32, window = 4, stride = 2, scale = 0, deletion = 0;
    double fill = 0.0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--checkpoint", o->checkpoint, "A run directory (newest valid checkpoint) or a .safetensors file")
      ->required();
  cmd->add_option("--config", o->config, "TOML config (default: RUN_DIR/config.toml)");
  cmd->add_option("--method", o->methods, "Comma-separated: saliency, ig, gradcam, occlusion, or all")
      ->capture_default_str();
  cmd->add_option("--out", o->out, "Folder for the PNG heatmaps and .npy maps")->capture_default_str();
  cmd->add_option("--first", o->first, "First sample of each file to explain")->capture_default_str();
  cmd->add_option("--limit", o->limit, "Samples to explain per file (0: all)")->capture_default_str();
  cmd->add_option("--target", o->target, "Class to explain (default: each sample's predicted class)");
  cmd->add_option("--steps", o->steps, "Integrated gradients: path steps")->capture_default_str();
  cmd->add_option("--window", o->window, "Occlusion: window side in pixels")->capture_default_str();
  cmd->add_option("--stride", o->stride, "Occlusion: window stride in pixels")->capture_default_str();
  cmd->add_option("--fill", o->fill, "Occlusion: pixel value of the occluded window; also the integrated gradients' "
                                     "baseline (in [0, 1] pixel units)")
      ->capture_default_str();
  cmd->add_option("--layer", o->layer, "Grad-CAM: top-level layer name (default: the last with a spatial output)");
  cmd->add_option("--scale", o->scale, "Heatmap pixel size (default: images at least 224 pixels high)");
  cmd->add_option("--deletion", o->deletion,
                  "Score each method by its deletion curve with this many points (0: off): the mean probability of "
                  "the explained class as the top-ranked pixels are set to --fill, against a random ranking");
  cmd->add_option("inputs", o->inputs, "idx, .npy or .png files")->required();
  cmd->callback([o] {
    const auto methods = parse_methods(o->methods);
    HPDL_CHECK(o->first >= 0 && o->limit >= 0, "explain: --first and --limit must not be negative");
    auto m = load_inference_model(o->checkpoint, o->config);
    const train::Config cfg = m.cfg;
    const nn::ModulePtr net = m.model;
    explain::Model model = [net, cfg](const Tensor& x) { return net->forward(normalize_inputs(cfg, x)); };
    namespace fs = std::filesystem;
    fs::create_directories(o->out);
    const int64_t scale = o->scale > 0 ? o->scale : std::max<int64_t>(1, (224 + m.sample[1] - 1) / m.sample[1]);

    for (const auto& file : o->inputs) {
      Tensor all = read_inputs(file, m.sample);
      HPDL_CHECK(o->first < all.dim(0), "explain: {} has {} samples; --first {} is past the end", file, all.dim(0),
                 o->first);
      const int64_t n = o->limit > 0 ? std::min(o->limit, all.dim(0) - o->first) : all.dim(0) - o->first;
      Tensor x = all.narrow(0, o->first, n).contiguous();
      Tensor probs;
      {
        NoGradGuard ng;
        probs = softmax(model(x), 1);
      }
      const int64_t classes = probs.dim(1);
      std::vector<int64_t> targets;
      if (o->target >= 0) {
        HPDL_CHECK(o->target < classes, "explain --target {}: the model has {} classes", o->target, classes);
        targets.assign(static_cast<size_t>(n), o->target);
      }
      targets = explain::resolve_targets(probs, targets);
      auto pv = probs.to_vector<float>();

      const std::string stem = stem_of(file);
      std::vector<double> ig_sum, ig_gap;
      std::string deletion;
      auto score_map = [&](const std::string& name, const Tensor& maps) {
        auto curve = explain::deletion_curve(model, x, maps, targets, o->deletion, o->fill);
        deletion += fmt::format("{}{} {:.4f}", deletion.empty() ? "" : ", ", name, curve.area);
      };
      for (const auto& method : methods) {
        Tensor maps;
        bool signed_map = false;
        if (method == "saliency") {
          maps = explain::saliency(model, x, targets);
        } else if (method == "ig") {
          auto r = explain::integrated_gradients(model, x, targets, o->steps, Tensor::full(x.shape(), o->fill));
          maps = r.map();
          ig_sum = r.sum;
          ig_gap = r.score_gap;
          signed_map = true;
        } else if (method == "gradcam") {
          auto seq = std::dynamic_pointer_cast<nn::Sequential>(net);
          HPDL_CHECK(seq != nullptr,
                     "explain gradcam: model '{}' is not a sequence of layers; Grad-CAM works for the CNNs (lenet5, "
                     "resnet20, resnet18, alexnet_bn, custom)",
                     cfg.model.name);
          auto split = explain::split_sequential(*seq, x.narrow(0, 0, 1), o->layer,
                                                 [cfg](const Tensor& t) { return normalize_inputs(cfg, t); });
          maps = explain::grad_cam(split, x, targets);
        } else {
          maps = explain::occlusion(model, x, targets, o->window, o->stride, o->fill);
          signed_map = true;
        }
        write_maps(fs::path(o->out) / fmt::format("{}-{}.npy", stem, method), maps);
        if (o->deletion > 0) score_map(method, maps);
        for (int64_t i = 0; i < n; ++i) {
          auto img = explain::render_heatmap(x.select(0, i), maps.select(0, i), signed_map, scale);
          data::write_png(fs::path(o->out) / fmt::format("{}-{}-{}.png", stem, o->first + i, method), img);
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const auto* row = pv.data() + i * classes;
        const int64_t pred = std::max_element(row, row + classes) - row;
        std::string line = fmt::format("{}\t{}\tclass {}\tp={:.4f}\ttarget {}", file, o->first + i, pred, row[pred],
                                       targets[i]);
        if (!ig_sum.empty())
          line += fmt::format("\tig_sum={:.4f}\tscore_gap={:.4f}", ig_sum[i], ig_gap[i]);
        std::printf("%s\n", line.c_str());
      }
      if (o->deletion > 0) {
        score_map("random", explain::random_map(n, x.dim(2), x.dim(3), 0x5eed));
        std::printf("%s: deletion area over %lld samples (lower: the map ranks what the model uses first): %s\n",
                    file.c_str(), static_cast<long long>(n), deletion.c_str());
      }
    }
    std::printf("wrote %s\n", o->out.c_str());
  });
}

}  // namespace hpdl::cli

// hpdl explain --checkpoint RUN_DIR [--best] INPUT...: why the trained model classifies
// each input as it does. For every sample, every chosen method (saliency,
// integrated gradients, Grad-CAM, occlusion; see hpdl/explain/explain.h)
// writes a heatmap PNG (input | map over it) and, per input file and method,
// the raw maps as an .npy [N, H, W] (float32) for further analysis. One line
// per sample on stdout: file, index, predicted class and probability, the
// explained class, and the integrated gradients' completeness check. `--time`
// also prints each method's own compute time (bench/explain/ uses it).
// A regression model (train.loss = mse, l1, huber) explains one of its outputs
// (--output K, default 0) instead of a class; its line shows that output's value.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>

#include <fmt/format.h>

#include "apps/hpdl/commands.h"
#include "apps/hpdl/inputs.h"
#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/explain/explain.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/objective.h"

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
// The output files' prefix: the input's stem; for an HDF5 dataset also the dataset ("d-test_images").
std::string stem_of(const std::string& arg, const std::string& hdf5_dataset) {
  const InputSpec spec = parse_input(arg);
  std::filesystem::path p(spec.file);
  if (p.extension() == ".gz") p = p.stem();
  if (!spec.hdf5) return p.stem().string();
  std::string ds = spec.dataset.empty() ? hdf5_dataset : spec.dataset;
  if (!ds.empty() && ds[0] == '/') ds.erase(0, 1);
  for (char& c : ds)
    if (c == '/') c = '_';
  return p.stem().string() + "-" + ds;
}

void write_maps(const std::filesystem::path& path, const Tensor& maps) {
  auto v = maps.contiguous().to_vector<float>();
  data::write_npy(path, DType::f32, maps.shape(), v.data());
}

}  // namespace

void register_explain(CLI::App& app) {
  auto* cmd = app.add_subcommand("explain", "Explain a trained model's predictions as heatmaps (AI forensics)");
  struct Opts {
    CheckpointArg checkpoint;
    std::string config, methods = "all", out = "explain", layer;
    std::vector<std::string> inputs;
    int64_t first = 0, limit = 8, target = -1, output = -1, steps = 32, window = 4, stride = 2, scale = 0, deletion = 0;
    double fill = 0.0;
    bool time = false;
  };
  auto o = std::make_shared<Opts>();
  add_checkpoint_options(cmd, o->checkpoint);
  cmd->add_option("--config", o->config, "TOML config (default: RUN_DIR/config.toml)");
  cmd->add_option("--method", o->methods, "Comma-separated: saliency, ig, gradcam, occlusion, or all")
      ->capture_default_str();
  cmd->add_option("--out", o->out, "Folder for the PNG heatmaps and .npy maps")->capture_default_str();
  cmd->add_option("--first", o->first, "First sample of each file to explain")->capture_default_str();
  cmd->add_option("--limit", o->limit, "Samples to explain per file (0: all)")->capture_default_str();
  cmd->add_option("--target", o->target, "Class to explain (default: each sample's predicted class)");
  cmd->add_option("--output", o->output, "Regression models: the output to explain (default 0)");
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
  cmd->add_flag("--time", o->time,
                "Print each method's compute time: one warm-up call on the first sample, then the timed call on all "
                "of them (no file reading, PNG or .npy writing)");
  cmd->add_option("inputs", o->inputs,
                  "idx, .npy or .png files, or FILE.h5[:DATASET] (default dataset: the run's data.hdf5_test_x)")
      ->required();
  cmd->callback([o] {
    const auto methods = parse_methods(o->methods);
    HPDL_CHECK(o->first >= 0 && o->limit >= 0, "explain: --first and --limit must not be negative");
    auto m = load_inference_model(o->checkpoint, o->config);
    const train::Config cfg = m.cfg;
    // A regression model has outputs, not classes: what needs a class (a target class, the
    // deletion curve's softmax probability) is refused by its option's name.
    const bool regression = train::Objective(cfg).regression();
    if (regression) {
      HPDL_CHECK(o->target < 0,
                 "explain --target: the run trained a regression model (train.loss = \"{}\"), which has no classes; "
                 "choose the output to explain with --output K",
                 cfg.train.loss);
      HPDL_CHECK(o->deletion == 0,
                 "explain --deletion: the deletion curve follows a class's softmax probability, and the run trained a "
                 "regression model (train.loss = \"{}\"); leave --deletion out",
                 cfg.train.loss);
    } else {
      HPDL_CHECK(o->output < 0,
                 "explain --output: it picks an output of a regression model, and the run trained a classifier "
                 "(train.loss = \"{}\"); choose a class with --target",
                 cfg.train.loss);
    }
    const nn::ModulePtr net = m.model;
    explain::Model model = [net, cfg](const Tensor& x) { return net->forward(normalize_inputs(cfg, x)); };
    namespace fs = std::filesystem;
    fs::create_directories(o->out);
    // Images at least 224 pixels high; a feature vector [1, 1, F] (csv, npy [N, F]) a strip at least
    // 224 pixels wide (its features side by side) and at least 32 high, however long it is.
    const bool strip = m.sample[1] == 1;
    const int64_t side = strip ? m.sample[2] : m.sample[1];
    const int64_t scale = o->scale > 0 ? o->scale : std::clamp<int64_t>((224 + side - 1) / side, 1, 64);
    const int64_t scale_y = strip ? std::max<int64_t>(scale, 32) : scale;

    auto& world = dist::Communicator::world();
    const bool root = world.rank() == 0;
    for (const auto& file : o->inputs) {
      Tensor all = read_inputs(file, m.sample, m.cfg.data.hdf5_test_x);
      HPDL_CHECK(o->first < all.dim(0), "explain: {} has {} samples; --first {} is past the end", file, all.dim(0),
                 o->first);
      const int64_t n = o->limit > 0 ? std::min(o->limit, all.dim(0) - o->first) : all.dim(0) - o->first;
      // Under mpirun each rank explains a contiguous share of the samples.
      const int64_t size = world.size(), rank = world.rank();
      const int64_t lo = n * rank / size, cnt = n * (rank + 1) / size - lo, most = (n + size - 1) / size;
      const int64_t h = m.sample[1], w = m.sample[2];
      Tensor x = all.narrow(0, o->first + lo, std::max<int64_t>(cnt, 1)).contiguous();  // one dummy row if idle
      Tensor probs;  // classification: softmax probabilities; regression: the output values
      {
        NoGradGuard ng;
        probs = model(x);
        if (!regression) probs = softmax(probs, 1);
      }
      const int64_t classes = probs.dim(1);
      std::vector<int64_t> targets;
      if (regression) {
        const int64_t k = std::max<int64_t>(o->output, 0);
        HPDL_CHECK(k < classes, "explain --output {}: the model has {} output(s), 0 to {}", k, classes, classes - 1);
        targets = explain::resolve_targets(probs, std::vector<int64_t>(static_cast<size_t>(x.dim(0)), k));
      } else {
        HPDL_CHECK(o->target < classes, "explain --target {}: the model has {} classes", o->target, classes);
        targets.assign(static_cast<size_t>(x.dim(0)), o->target);
        targets = explain::resolve_targets(probs, o->target >= 0 ? targets : std::vector<int64_t>{});
      }
      auto pv = probs.to_vector<float>();

      const std::string stem = stem_of(file, cfg.data.hdf5_test_x);
      // Per sample: predicted class, its probability, the explained class, IG sum and score gap.
      constexpr int64_t kCols = 5;
      std::vector<double> table(static_cast<size_t>(most * kCols), 0.0);
      for (int64_t i = 0; i < cnt; ++i) {
        const auto* row = pv.data() + i * classes;
        // Regression: the explained output and its value in the first two columns.
        const int64_t pred = regression ? targets[i] : std::max_element(row, row + classes) - row;
        table[i * kCols] = static_cast<double>(pred);
        table[i * kCols + 1] = row[pred];
        table[i * kCols + 2] = static_cast<double>(targets[i]);
      }
      bool have_ig = false;
      std::string deletion;
      // The deletion area over all n samples: each rank's mean, weighted by its count.
      auto score_map = [&](const std::string& name, const Tensor& maps) {
        std::vector<double> sums = {0.0, static_cast<double>(cnt)};
        if (cnt > 0) sums[0] = cnt * explain::deletion_curve(model, x, maps, targets, o->deletion, o->fill).area;
        world.allreduce(sums.data(), 2, DType::f64);
        deletion += fmt::format("{}{} {:.4f}", deletion.empty() ? "" : ", ", name, sums[0] / sums[1]);
      };
      for (const auto& method : methods) {
        Tensor maps;
        bool signed_map = false;
        std::optional<explain::Split> split;
        if (method == "gradcam") {
          auto seq = std::dynamic_pointer_cast<nn::Sequential>(net);
          HPDL_CHECK(seq != nullptr,
                     "explain gradcam: model '{}' is not a sequence of layers; Grad-CAM works for the CNNs (lenet5, "
                     "resnet20, resnet18, alexnet_bn, custom)",
                     cfg.model.name);
          split = explain::split_sequential(*seq, x.narrow(0, 0, 1), o->layer,
                                            [cfg](const Tensor& t) { return normalize_inputs(cfg, t); });
        }
        // The method on samples xs with classes ts; IG also fills the table.
        auto compute = [&](const Tensor& xs, const std::vector<int64_t>& ts, bool fill_table) {
          if (method == "saliency") return explain::saliency(model, xs, ts);
          if (method == "gradcam") return explain::grad_cam(*split, xs, ts);
          if (method == "occlusion") return explain::occlusion(model, xs, ts, o->window, o->stride, o->fill);
          auto r = explain::integrated_gradients(model, xs, ts, o->steps, Tensor::full(xs.shape(), o->fill));
          for (int64_t i = 0; fill_table && i < cnt; ++i)
            table[i * kCols + 3] = r.sum[i], table[i * kCols + 4] = r.score_gap[i];
          return r.map();
        };
        // --time: an untimed call on the first sample (oneDNN primitives, the
        // allocator's pools), then the call on all samples alone is timed.
        if (o->time) compute(x.narrow(0, 0, 1).contiguous(), {targets[0]}, false);
        const auto start = std::chrono::steady_clock::now();
        maps = compute(x, targets, true);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (o->time && root)
          std::printf("explain time: %s %lld samples %.6f s %.4f ms/sample\n", method.c_str(),
                      static_cast<long long>(x.dim(0)), seconds, 1e3 * seconds / static_cast<double>(x.dim(0)));
        have_ig = have_ig || method == "ig";
        signed_map = method == "ig" || method == "occlusion";
        for (int64_t i = 0; i < cnt; ++i) {
          auto img = explain::render_heatmap(x.select(0, i), maps.select(0, i), signed_map, scale, scale_y);
          data::write_png(fs::path(o->out) / fmt::format("{}-{}-{}.png", stem, o->first + lo + i, method), img);
        }
        // Every rank's maps to the first rank, which writes the .npy of all n.
        Tensor padded = Tensor::zeros({most, h, w});
        if (cnt > 0) padded.narrow(0, 0, cnt).copy_(maps.narrow(0, 0, cnt));
        Tensor gathered = world.allgather(padded);
        if (o->deletion > 0) score_map(method, maps);
        if (root) {
          std::vector<Tensor> parts;
          for (int64_t r = 0; r < size; ++r) {
            const int64_t c = n * (r + 1) / size - n * r / size;
            if (c > 0) parts.push_back(gathered.select(0, r).narrow(0, 0, c));
          }
          write_maps(fs::path(o->out) / fmt::format("{}-{}.npy", stem, method), cat(parts, 0));
        }
      }
      auto rows = world.allgather(Tensor::from_vector(table, {most, kCols})).to_vector<double>();
      for (int64_t r = 0; root && r < size; ++r) {
        const int64_t first = n * r / size, c = n * (r + 1) / size - first;
        for (int64_t i = 0; i < c; ++i) {
          const double* v = rows.data() + (r * most + i) * kCols;
          std::string line =
              regression ? fmt::format("{}\t{}\tvalue {:.7g}\toutput {}", file, o->first + first + i, v[1],
                                       static_cast<int64_t>(v[2]))
                         : fmt::format("{}\t{}\tclass {}\tp={:.4f}\ttarget {}", file, o->first + first + i,
                                       static_cast<int64_t>(v[0]), v[1], static_cast<int64_t>(v[2]));
          // Regression values need not be near 1: more digits, so the completeness check can be read.
          if (have_ig)
            line += regression ? fmt::format("\tig_sum={:.7g}\tscore_gap={:.7g}", v[3], v[4])
                               : fmt::format("\tig_sum={:.4f}\tscore_gap={:.4f}", v[3], v[4]);
          std::printf("%s\n", line.c_str());
        }
      }
      if (o->deletion > 0) {
        // One random order for all n samples, whatever the number of ranks.
        Tensor random = explain::random_map(n, h, w, 0x5eed).narrow(0, lo, std::max<int64_t>(cnt, 1));
        if (cnt == 0) random = Tensor::zeros({1, h, w});
        score_map("random", random.contiguous());
        if (root)
          std::printf("%s: deletion area over %lld samples (lower: the map ranks what the model uses first): %s\n",
                      file.c_str(), static_cast<long long>(n), deletion.c_str());
      }
    }
    if (!root) return;
    std::printf("wrote %s\n", o->out.c_str());
  });
}

}  // namespace hpdl::cli

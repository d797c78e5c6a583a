// Config parsing. One table binds each key path to a field of Config and its
// type; parsing, --set overrides, TOML and JSON output all walk that table, so
// a key added there is known everywhere at once. toml++ stays private to this
// file (libhpdl links it PRIVATE).
#include "hpdl/train/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <variant>

#include "hpdl/core/error.h"
#include "hpdl/io/file.h"
#include "hpdl/train/early_stopping.h"

namespace hpdl::train {
namespace {

using Field = std::variant<int64_t*, uint64_t*, double*, bool*, std::string*, std::vector<int64_t>*,
                           std::vector<double>*, std::vector<LayerSpec>*>;

struct Key {
  std::string path;
  Field field;
};

std::vector<Key> bind(Config& c) {
  auto& d = c.data;
  auto& m = c.model;
  auto& o = c.optimizer;
  auto& s = c.schedule;
  auto& t = c.train;
  return {
      {"data.dataset", &d.dataset}, {"data.path", &d.path}, {"data.store", &d.store},
      {"data.hdf5_x", &d.hdf5_x}, {"data.hdf5_y", &d.hdf5_y}, {"data.hdf5_test_x", &d.hdf5_test_x},
      {"data.hdf5_test_y", &d.hdf5_test_y},
      {"data.batch_size", &d.batch_size}, {"data.workers", &d.workers}, {"data.prefetch", &d.prefetch},
      {"data.pin_memory", &d.pin_memory},
      {"data.shuffle", &d.shuffle}, {"data.drop_last", &d.drop_last}, {"data.random_crop", &d.random_crop},
      {"data.crop_padding", &d.crop_padding}, {"data.random_flip", &d.random_flip},
      {"data.normalize", &d.normalize}, {"data.mean", &d.mean}, {"data.std", &d.std},
      {"data.validation", &d.validation},
      {"model.name", &m.name}, {"model.num_classes", &m.num_classes}, {"model.in_channels", &m.in_channels},
      {"model.hidden", &m.hidden}, {"model.layers", &m.layers},
      {"model.patch_size", &m.patch_size}, {"model.dim", &m.dim}, {"model.depth", &m.depth}, {"model.heads", &m.heads},
      {"model.mlp_ratio", &m.mlp_ratio}, {"model.dropout", &m.dropout},
      {"optimizer.name", &o.name}, {"optimizer.lr", &o.lr}, {"optimizer.momentum", &o.momentum},
      {"optimizer.nesterov", &o.nesterov}, {"optimizer.weight_decay", &o.weight_decay}, {"optimizer.eta", &o.eta},
      {"optimizer.betas", &o.betas}, {"optimizer.eps", &o.eps}, {"optimizer.lr_scaling", &o.lr_scaling},
      {"optimizer.base_batch", &o.base_batch}, {"optimizer.clip_grad_norm", &o.clip_grad_norm},
      {"schedule.name", &s.name}, {"schedule.warmup_epochs", &s.warmup_epochs},
      {"schedule.milestones", &s.milestones}, {"schedule.gamma", &s.gamma}, {"schedule.power", &s.power},
      {"schedule.final_lr", &s.final_lr},
      {"train.epochs", &t.epochs}, {"train.seed", &t.seed}, {"train.threads", &t.threads},
      {"train.device", &t.device}, {"train.precision", &t.precision}, {"train.channels_last", &t.channels_last}, {"train.loss_scale", &t.loss_scale}, {"train.run_dir", &t.run_dir},
      {"train.checkpoint_every_steps", &t.checkpoint_every_steps},
      {"train.checkpoint_every_epochs", &t.checkpoint_every_epochs}, {"train.checkpoint_async", &t.checkpoint_async},
      {"train.keep_checkpoints", &t.keep_checkpoints}, {"train.trace", &t.trace}, {"train.overwrite", &t.overwrite}, {"train.log_every", &t.log_every},
      {"train.eval_every_epochs", &t.eval_every_epochs}, {"train.max_steps", &t.max_steps},
      {"train.stop_after_epoch", &t.stop_after_epoch}, {"train.label_smoothing", &t.label_smoothing},
      {"train.monitor", &t.monitor}, {"train.keep_best", &t.keep_best},
      {"train.early_stopping_patience", &t.early_stopping_patience},
      {"train.early_stopping_min_delta", &t.early_stopping_min_delta},
      {"train.loss", &t.loss}, {"train.huber_delta", &t.huber_delta},
      {"train.accumulate_steps", &t.accumulate_steps},
      {"train.sync_batchnorm", &t.sync_batchnorm}, {"train.sync_batchnorm_group", &t.sync_batchnorm_group},
      {"train.bucket_mb", &t.bucket_mb}, {"train.bf16_wire", &t.bf16_wire},
      {"train.powersgd_rank", &t.powersgd_rank}, {"train.powersgd_start_step", &t.powersgd_start_step},
      {"train.hierarchical_allreduce", &t.hierarchical_allreduce},
      {"train.shard_optimizer", &t.shard_optimizer}, {"train.zero_stage", &t.zero_stage},
      {"train.zero3_prefetch", &t.zero3_prefetch},
      {"train.local_sgd_steps", &t.local_sgd_steps},
      {"train.local_sgd_average_optimizer", &t.local_sgd_average_optimizer},
      {"train.pipeline_stages", &t.pipeline_stages}, {"train.micro_batches", &t.micro_batches},
      {"train.pipeline_schedule", &t.pipeline_schedule}, {"train.pipeline_split_points", &t.pipeline_split_points},
      {"train.pipeline_balance", &t.pipeline_balance},
      {"train.tensor_parallel", &t.tensor_parallel},
      {"train.activation_checkpointing", &t.activation_checkpointing},
      {"train.ema_decay", &t.ema_decay}, {"train.ema_warmup", &t.ema_warmup},
  };
}

const char* const kLayerKeys[] = {"type", "out_channels", "out_features", "kernel_size", "stride", "padding", "bias", "p"};

// The closest candidate within a third of the word's length (at least 2 edits), or "".
std::string suggest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

std::string unknown_key_message(const std::string& source, const std::string& path,
                                const std::vector<std::string>& known_paths) {
  // Suggest among the keys of the same parent (or among the sections for a top-level key).
  size_t dot = path.rfind('.');
  std::string parent = dot == std::string::npos ? "" : path.substr(0, dot + 1);
  std::string leaf = dot == std::string::npos ? path : path.substr(dot + 1);
  std::vector<std::string> siblings;
  for (auto& k : known_paths) {
    if (k.compare(0, parent.size(), parent) != 0) continue;
    std::string rest = k.substr(parent.size());
    rest = rest.substr(0, rest.find('.'));
    if (std::find(siblings.begin(), siblings.end(), rest) == siblings.end()) siblings.push_back(rest);
  }
  std::string s = suggest(leaf, siblings);
  std::string msg = fmt::format("{}: unknown key '{}'", source, path);
  if (!s.empty()) msg += fmt::format(" (did you mean '{}'?)", s);
  else if (!siblings.empty() && siblings.size() <= 16) {
    std::string list;
    for (auto& x : siblings) list += (list.empty() ? "" : ", ") + x;
    msg += fmt::format(" (known keys{}: {})", parent.empty() ? "" : " in [" + parent.substr(0, parent.size() - 1) + "]", list);
  }
  return msg;
}

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date/time";
  }
}

int64_t get_int(const toml::node& n, const std::string& src, const std::string& path) {
  auto v = n.value_exact<int64_t>();
  HPDL_CHECK(v.has_value(), "{}: key '{}' must be an integer, got {}", src, path, type_name(n));
  return *v;
}

double get_float(const toml::node& n, const std::string& src, const std::string& path) {
  if (n.is_integer()) return static_cast<double>(*n.value_exact<int64_t>());
  auto v = n.value_exact<double>();
  HPDL_CHECK(v.has_value(), "{}: key '{}' must be a number, got {}", src, path, type_name(n));
  return *v;
}

void parse_layers(std::vector<LayerSpec>& out, const toml::node& n, const std::string& src, const std::string& path) {
  const toml::array* arr = n.as_array();
  HPDL_CHECK(arr != nullptr, "{}: key '{}' must be an array of tables ([[{}]]), got {}", src, path, path, type_name(n));
  out.clear();
  std::vector<std::string> known(std::begin(kLayerKeys), std::end(kLayerKeys));
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string lp = fmt::format("{}[{}]", path, i);
    const toml::table* t = (*arr)[i].as_table();
    HPDL_CHECK(t != nullptr, "{}: '{}' must be a table, got {}", src, lp, type_name((*arr)[i]));
    LayerSpec l;
    for (auto& [k, v] : *t) {
      const std::string key(k.str());
      const std::string kp = lp + "." + key;
      if (key == "type") {
        HPDL_CHECK(v.is_string(), "{}: key '{}' must be a string, got {}", src, kp, type_name(v));
        l.type = *v.value<std::string>();
      } else if (key == "bias") {
        HPDL_CHECK(v.is_boolean(), "{}: key '{}' must be a boolean, got {}", src, kp, type_name(v));
        l.bias = *v.value<bool>();
      } else if (key == "p") {
        l.p = get_float(v, src, kp);
      } else if (key == "out_channels") {
        l.out_channels = get_int(v, src, kp);
      } else if (key == "out_features") {
        l.out_features = get_int(v, src, kp);
      } else if (key == "kernel_size") {
        l.kernel_size = get_int(v, src, kp);
      } else if (key == "stride") {
        l.stride = get_int(v, src, kp);
      } else if (key == "padding") {
        l.padding = get_int(v, src, kp);
      } else {
        std::vector<std::string> full;
        for (auto& x : known) full.push_back(lp + "." + x);
        HPDL_FAIL("{}", unknown_key_message(src, kp, full));
      }
    }
    HPDL_CHECK(!l.type.empty(), "{}: '{}' needs a type (conv2d, linear, relu, maxpool2d, avgpool2d, batchnorm2d, "
               "dropout, flatten)", src, lp);
    out.push_back(l);
  }
}

// Sets one bound field from a TOML node, checking its type.
void assign(const Key& key, const toml::node& n, const std::string& src) {
  const std::string& path = key.path;
  std::visit(
      [&](auto* f) {
        using T = std::remove_pointer_t<decltype(f)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          *f = get_int(n, src, path);
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          int64_t v = get_int(n, src, path);
          HPDL_CHECK(v >= 0, "{}: key '{}' must be >= 0, got {}", src, path, v);
          *f = static_cast<uint64_t>(v);
        } else if constexpr (std::is_same_v<T, double>) {
          *f = get_float(n, src, path);
        } else if constexpr (std::is_same_v<T, bool>) {
          HPDL_CHECK(n.is_boolean(), "{}: key '{}' must be a boolean (true/false), got {}", src, path, type_name(n));
          *f = *n.value<bool>();
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (path == "train.loss_scale" && (n.is_integer() || n.is_floating_point())) {  // a number or a word
            *f = fmt::format("{}", get_float(n, src, path));
            return;
          }
          HPDL_CHECK(n.is_string(), "{}: key '{}' must be a string, got {}", src, path, type_name(n));
          *f = *n.value<std::string>();
        } else if constexpr (std::is_same_v<T, std::vector<LayerSpec>>) {
          parse_layers(*f, n, src, path);
        } else {
          const toml::array* a = n.as_array();
          HPDL_CHECK(a != nullptr, "{}: key '{}' must be an array, got {}", src, path, type_name(n));
          T out;
          for (size_t i = 0; i < a->size(); ++i) {
            const std::string ip = fmt::format("{}[{}]", path, i);
            if constexpr (std::is_same_v<T, std::vector<int64_t>>) out.push_back(get_int((*a)[i], src, ip));
            else out.push_back(get_float((*a)[i], src, ip));
          }
          *f = std::move(out);
        }
      },
      key.field);
}

void walk(Config& c, const toml::table& t, const std::string& prefix, const std::string& src,
          const std::vector<Key>& keys, const std::vector<std::string>& paths) {
  for (auto& [k, v] : t) {
    const std::string path = prefix + std::string(k.str());
    auto it = std::find_if(keys.begin(), keys.end(), [&](const Key& x) { return x.path == path; });
    if (it != keys.end()) {
      assign(*it, v, src);
      continue;
    }
    const bool is_section = std::any_of(paths.begin(), paths.end(),
                                        [&](const std::string& p) { return p.compare(0, path.size() + 1, path + ".") == 0; });
    if (is_section) {
      HPDL_CHECK(v.is_table(), "{}: '{}' must be a table ([{}]), got {}", src, path, path, type_name(v));
      walk(c, *v.as_table(), path + ".", src, keys, paths);
      continue;
    }
    HPDL_FAIL("{}", unknown_key_message(src, path, paths));
  }
}

std::vector<std::string> paths_of(const std::vector<Key>& keys) {
  std::vector<std::string> p;
  for (auto& k : keys) p.push_back(k.path);
  return p;
}

void check_one_of(const std::string& src, const char* key, const std::string& v, std::initializer_list<const char*> ok) {
  for (auto* o : ok)
    if (v == o) return;
  std::vector<std::string> names(ok.begin(), ok.end());
  std::string list;
  for (auto& n : names) list += (list.empty() ? "" : ", ") + n;
  std::string s = suggest(v, names);
  HPDL_FAIL("{}: {} = '{}' is not one of {}{}", src, key, v, list, s.empty() ? "" : fmt::format(" (did you mean '{}'?)", s));
}

}  // namespace

std::optional<double> loss_scale_value(const std::string& v) {
  if (v == "auto" || v == "dynamic") return 0.0;
  if (v == "none") return 1.0;
  if (v.empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (end != v.c_str() + v.size() || !std::isfinite(d) || d <= 0) return std::nullopt;
  return d;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::vector<std::string> config_keys() {
  Config c;
  return paths_of(bind(c));
}

void apply_override(Config& c, const std::string& assignment) {
  const std::string src = "--set " + assignment;
  size_t eq = assignment.find('=');
  HPDL_CHECK(eq != std::string::npos && eq > 0, "{}: expected KEY=VALUE, e.g. --set optimizer.lr=0.05", src);
  std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  auto keys = bind(c);
  auto it = std::find_if(keys.begin(), keys.end(), [&](const Key& x) { return x.path == path; });
  if (it == keys.end()) HPDL_FAIL("{}", unknown_key_message(src, path, paths_of(keys)));
  HPDL_CHECK(!std::holds_alternative<std::vector<LayerSpec>*>(it->field),
             "{}: model.layers cannot be set with --set; write [[model.layers]] tables in the config file", src);
  toml::table t;
  bool parsed = false;
  try {
    t = toml::parse("v = " + text);
    parsed = true;
  } catch (const toml::parse_error&) {
  }
  const toml::node* v = parsed ? t.get("v") : nullptr;
  if (std::holds_alternative<std::string*>(it->field) && (v == nullptr || !v->is_string())) {
    *std::get<std::string*>(it->field) = text;  // unquoted string
    return;
  }
  HPDL_CHECK(v != nullptr, "{}: '{}' is not a TOML value (quote strings, write arrays as [1, 2])", src, text);
  assign(*it, *v, src);
}

void validate(const Config& c, const std::string& src) {
  auto positive = [&](const char* key, double v) { HPDL_CHECK(v > 0, "{}: {} must be > 0, got {}", src, key, v); };
  auto non_negative = [&](const char* key, double v) { HPDL_CHECK(v >= 0, "{}: {} must be >= 0, got {}", src, key, v); };
  const auto& d = c.data;
  check_one_of(src, "data.dataset", d.dataset, {"fashion-mnist", "mnist", "npy", "csv", "hdf5", "store"});
  positive("data.batch_size", static_cast<double>(d.batch_size));
  non_negative("data.workers", static_cast<double>(d.workers));
  positive("data.prefetch", static_cast<double>(d.prefetch));
  non_negative("data.validation", static_cast<double>(d.validation));
  non_negative("data.crop_padding", static_cast<double>(d.crop_padding));
  HPDL_CHECK(!d.mean.empty() && d.mean.size() == d.std.size(), "{}: data.mean has {} values but data.std has {}",
             src, d.mean.size(), d.std.size());
  for (double s : d.std) positive("data.std", s);
  HPDL_CHECK(d.dataset != "store" || !d.store.empty(), "{}: data.dataset = 'store' needs data.store (a packed store path)", src);
  if (d.dataset == "hdf5") {
    HPDL_CHECK(!d.path.empty(), "{}: data.dataset = 'hdf5' needs data.path (the HDF5 file, e.g. \"data.h5\")", src);
    for (auto [key, name] : {std::pair{"data.hdf5_x", &d.hdf5_x}, std::pair{"data.hdf5_y", &d.hdf5_y},
                             std::pair{"data.hdf5_test_x", &d.hdf5_test_x}, std::pair{"data.hdf5_test_y", &d.hdf5_test_y}})
      HPDL_CHECK(!name->empty() && name->find_first_not_of('/') != std::string::npos,
                 "{}: {} must name a dataset inside data.path, e.g. \"train/images\"", src, key);
  }

  const auto& m = c.model;
  check_one_of(src, "model.name", m.name, {"mlp", "lenet5", "resnet20", "resnet18", "resnet50", "alexnet_bn", "vgg11_bn", "vgg16_bn", "lstm", "gru", "vit", "custom"});
  positive("model.num_classes", static_cast<double>(m.num_classes));
  positive("model.in_channels", static_cast<double>(m.in_channels));
  for (auto h : m.hidden) positive("model.hidden", static_cast<double>(h));
  positive("model.patch_size", static_cast<double>(m.patch_size));
  positive("model.dim", static_cast<double>(m.dim));
  positive("model.depth", static_cast<double>(m.depth));
  positive("model.heads", static_cast<double>(m.heads));
  positive("model.mlp_ratio", m.mlp_ratio);
  if (m.dropout != -1.0) {
    HPDL_CHECK(m.dropout >= 0 && m.dropout < 1, "{}: model.dropout = {} is not a probability in [0, 1) (or -1 for "
               "the model's default)", src, m.dropout);
    const bool has_dropout = m.name == "mlp" || m.name == "alexnet_bn" || m.name == "vgg11_bn" ||
                             m.name == "vgg16_bn" || m.name == "vit";
    HPDL_CHECK(has_dropout, "{}: model.dropout = {} but model.name = \"{}\" has no dropout (it applies to mlp, "
               "alexnet_bn, vgg11_bn, vgg16_bn and vit; a custom model takes dropout layers)", src, m.dropout, m.name);
  }
  HPDL_CHECK(m.name != "vit" || m.dim % m.heads == 0, "{}: model.dim = {} is not divisible by model.heads = {}", src, m.dim, m.heads);
  HPDL_CHECK(m.name != "custom" || !m.layers.empty(), "{}: model.name = 'custom' needs [[model.layers]] tables", src);
  HPDL_CHECK(m.name == "custom" || m.layers.empty(), "{}: [[model.layers]] is only used with model.name = 'custom' "
             "(got '{}')", src, m.name);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const auto& l = m.layers[i];
    const std::string key = fmt::format("model.layers[{}].type", i);
    check_one_of(src, key.c_str(), l.type,
                       {"conv2d", "linear", "relu", "maxpool2d", "avgpool2d", "batchnorm2d", "dropout", "flatten"});
    if (l.type == "conv2d")
      HPDL_CHECK(l.out_channels > 0, "{}: model.layers[{}] (conv2d) needs out_channels > 0", src, i);
    if (l.type == "linear")
      HPDL_CHECK(l.out_features > 0, "{}: model.layers[{}] (linear) needs out_features > 0", src, i);
    HPDL_CHECK(l.kernel_size > 0 && l.stride > 0 && l.padding >= 0,
               "{}: model.layers[{}]: kernel_size and stride must be > 0, padding >= 0", src, i);
    HPDL_CHECK(l.p >= 0 && l.p < 1, "{}: model.layers[{}].p must be in [0, 1), got {}", src, i, l.p);
  }

  const auto& o = c.optimizer;
  check_one_of(src, "optimizer.name", o.name, {"sgd", "adamw", "lars", "lamb"});
  positive("optimizer.lr", o.lr);
  HPDL_CHECK(o.momentum >= 0 && o.momentum < 1, "{}: optimizer.momentum must be in [0, 1), got {}", src, o.momentum);
  non_negative("optimizer.weight_decay", o.weight_decay);
  non_negative("optimizer.clip_grad_norm", o.clip_grad_norm);
  positive("optimizer.eta", o.eta);
  positive("optimizer.eps", o.eps);
  HPDL_CHECK(o.betas.size() == 2 && o.betas[0] >= 0 && o.betas[0] < 1 && o.betas[1] >= 0 && o.betas[1] < 1,
             "{}: optimizer.betas must be two values in [0, 1), e.g. [0.9, 0.999]", src);
  check_one_of(src, "optimizer.lr_scaling", o.lr_scaling, {"none", "linear"});
  positive("optimizer.base_batch", static_cast<double>(o.base_batch));

  const auto& s = c.schedule;
  check_one_of(src, "schedule.name", s.name, {"constant", "step", "cosine", "poly"});
  non_negative("schedule.warmup_epochs", s.warmup_epochs);
  positive("schedule.gamma", s.gamma);
  positive("schedule.power", s.power);
  non_negative("schedule.final_lr", s.final_lr);
  for (size_t i = 0; i < s.milestones.size(); ++i)
    HPDL_CHECK(s.milestones[i] > 0 && (i == 0 || s.milestones[i] > s.milestones[i - 1]),
               "{}: schedule.milestones must be increasing positive epochs", src);

  const auto& t = c.train;
  positive("train.epochs", static_cast<double>(t.epochs));
  non_negative("train.threads", static_cast<double>(t.threads));
  HPDL_CHECK(t.device == "cpu" || t.device == "cuda" || t.device.rfind("cuda:", 0) == 0,
             "{}: train.device = '{}' is not cpu, cuda or cuda:N", src, t.device);
  check_one_of(src, "train.precision", t.precision, {"fp32", "bf16", "fp16"});
  HPDL_CHECK(!c.data.pin_memory || t.device != "cpu",
             "{}: data.pin_memory = true needs train.device = 'cuda' (page-locked batches only speed up copies to a "
             "GPU)", src);
  if (!loss_scale_value(t.loss_scale).has_value()) {
    std::string s = suggest(t.loss_scale, {"auto", "dynamic", "none"});
    HPDL_FAIL("{}: train.loss_scale = '{}' is not one of auto, dynamic, none or a positive number{}", src,
              t.loss_scale, s.empty() ? "" : fmt::format(" (did you mean '{}'?)", s));
  }
  HPDL_CHECK(!t.run_dir.empty(), "{}: train.run_dir must not be empty", src);
  non_negative("train.checkpoint_every_steps", static_cast<double>(t.checkpoint_every_steps));
  non_negative("train.checkpoint_every_epochs", static_cast<double>(t.checkpoint_every_epochs));
  positive("train.keep_checkpoints", static_cast<double>(t.keep_checkpoints));
  positive("train.log_every", static_cast<double>(t.log_every));
  non_negative("train.eval_every_epochs", static_cast<double>(t.eval_every_epochs));
  non_negative("train.max_steps", static_cast<double>(t.max_steps));
  non_negative("train.stop_after_epoch", static_cast<double>(t.stop_after_epoch));
  non_negative("train.early_stopping_patience", static_cast<double>(t.early_stopping_patience));
  HPDL_CHECK(t.early_stopping_min_delta >= 0 && std::isfinite(t.early_stopping_min_delta),
             "{}: train.early_stopping_min_delta must be finite and >= 0, got {}", src, t.early_stopping_min_delta);
  resolve_monitor(c, src);  // an unknown name is refused even while nothing monitors it
  if (t.keep_best || t.early_stopping_patience > 0)
    HPDL_CHECK(t.eval_every_epochs > 0, "{}: {} compares evaluations, but train.eval_every_epochs = 0 turns them off "
               "(hpdl tune does so in its trials, whose schedulers stop trials themselves); set "
               "train.eval_every_epochs >= 1 or turn it off", src,
               t.keep_best ? "train.keep_best = true" : "train.early_stopping_patience > 0");
  positive("train.bucket_mb", t.bucket_mb);
  HPDL_CHECK(!t.hierarchical_allreduce || t.device == "cpu", "{}: train.hierarchical_allreduce = true is for CPU "
             "ranks over MPI; with train.device = \"{}\" gradients go over NCCL, which builds its own rings and trees "
             "from the node topology (set it false)", src, t.device);
  positive("train.accumulate_steps", static_cast<double>(t.accumulate_steps));
  HPDL_CHECK(t.label_smoothing >= 0 && t.label_smoothing < 1, "{}: train.label_smoothing must be in [0, 1), got {}",
             src, t.label_smoothing);
  check_one_of(src, "train.loss", t.loss, {"cross_entropy", "mse", "l1", "huber"});
  HPDL_CHECK(t.loss == "cross_entropy" || t.label_smoothing == 0, "{}: train.label_smoothing = {} smooths class "
             "targets; it does not apply to train.loss = '{}' (set it to 0)", src, t.label_smoothing, t.loss);
  positive("train.huber_delta", t.huber_delta);
  non_negative("train.sync_batchnorm_group", static_cast<double>(t.sync_batchnorm_group));
  HPDL_CHECK(t.sync_batchnorm_group == 0 || t.sync_batchnorm, "{}: train.sync_batchnorm_group = {} needs "
             "train.sync_batchnorm = true (groups of ranks share batch statistics only when they are synchronized)",
             src, t.sync_batchnorm_group);
  HPDL_CHECK(t.zero_stage >= 1 && t.zero_stage <= 3, "{}: train.zero_stage = {} is not 1 (sharded optimizer "
             "state), 2 (also sharded gradients) or 3 (also sharded parameters)", src, t.zero_stage);
  if (t.zero_stage >= 2) {
    const int64_t z = t.zero_stage;
    HPDL_CHECK(t.shard_optimizer, "{}: train.zero_stage = {} needs train.shard_optimizer = true (stage {} shards the "
               "{} on top of the optimizer state)", src, z, z, z == 2 ? "gradients" : "gradients and parameters");
    // Each of these needs every rank to hold every gradient, or keeps gradients between micro-batches.
    auto refuse = [&](bool on, const std::string& key, const char* why) {
      HPDL_CHECK(!on, "{}: train.zero_stage = {} cannot be combined with {}: {}; set it off or use "
                 "train.zero_stage = 1", src, z, key, why);
    };
    refuse(t.accumulate_steps > 1, fmt::format("train.accumulate_steps = {}", t.accumulate_steps),
           "a rank would have to keep the gradients it does not own between micro-batches");
    refuse(t.bf16_wire, "train.bf16_wire = true", "gradients are reduced to their owners in float32");
    refuse(t.hierarchical_allreduce, "train.hierarchical_allreduce = true",
           "gradients are reduced to their owners, not all-reduced");
    refuse(t.loss_scale != "auto" && t.loss_scale != "none" && t.loss_scale != "1",
           fmt::format("train.loss_scale = '{}'", t.loss_scale),
           "the finiteness check would see only this rank's shard of the gradients");
    refuse(t.precision == "fp16", "train.precision = \"fp16\"",
           "it uses dynamic loss scaling, whose finiteness check would see only this rank's shard of the gradients");
    refuse(t.device != "cpu", fmt::format("train.device = \"{}\"", t.device), "sharded gradients are for CPU ranks");
    // Stage 3 runs each unit's forward again inside backward (gathered around a checkpointed segment).
    refuse(z == 3 && t.sync_batchnorm, "train.sync_batchnorm = true",
           "stage 3 recomputes each unit in backward, where synchronized batch norm would all-reduce its statistics "
           "a second time (design decision 67)");
  }
  non_negative("train.powersgd_rank", static_cast<double>(t.powersgd_rank));
  non_negative("train.powersgd_start_step", static_cast<double>(t.powersgd_start_step));
  if (t.powersgd_rank > 0) {
    // Each of these sends the gradients another way, or none per step.
    auto refuse = [&](bool on, const std::string& key, const char* why) {
      HPDL_CHECK(!on, "{}: train.powersgd_rank = {} cannot be combined with {}: {}; set one of them off", src,
                 t.powersgd_rank, key, why);
    };
    refuse(t.bf16_wire, "train.bf16_wire = true", "the factors are all-reduced in float32");
    refuse(t.shard_optimizer && t.zero_stage >= 2, fmt::format("train.zero_stage = {}", t.zero_stage),
           "gradients are reduced to their owners, not all-reduced");
    refuse(t.local_sgd_steps > 0, fmt::format("train.local_sgd_steps = {}", t.local_sgd_steps),
           "no gradients are all-reduced between averaging points");
    refuse(t.pipeline_stages > 1, fmt::format("train.pipeline_stages = {}", t.pipeline_stages),
           "the stages' replicas average their gradients in plain buckets");
    refuse(t.tensor_parallel > 1, fmt::format("train.tensor_parallel = {}", t.tensor_parallel),
           "the groups' replicas average their gradients in plain buckets");
    refuse(t.device != "cpu", fmt::format("train.device = \"{}\"", t.device), "PowerSGD runs on CPU ranks");
  }
  non_negative("train.local_sgd_steps", static_cast<double>(t.local_sgd_steps));
  HPDL_CHECK(!t.local_sgd_average_optimizer || t.local_sgd_steps > 0, "{}: train.local_sgd_average_optimizer = true "
             "needs train.local_sgd_steps > 0 (without local SGD the optimizer state is identical on every rank)", src);
  if (t.local_sgd_steps > 0) {
    // Each of these assumes the gradients (or batch statistics) are shared by every rank at every step.
    auto refuse = [&](bool on, const char* key, const char* why) {
      HPDL_CHECK(!on, "{}: train.local_sgd_steps = {} cannot be combined with {}: {}; set one of them off", src,
                 t.local_sgd_steps, key, why);
    };
    refuse(t.shard_optimizer, "train.shard_optimizer = true",
           "each rank would update only its shard, from gradients that are no longer all-reduced");
    refuse(t.sync_batchnorm, "train.sync_batchnorm = true",
           "it communicates at every forward pass, which local SGD is meant to avoid");
    refuse(t.bf16_wire, "train.bf16_wire = true",
           "no gradients go over the wire, and parameters are averaged in float32");
    refuse(t.loss_scale != "auto" && t.loss_scale != "none" && t.loss_scale != "1",
           fmt::format("train.loss_scale = '{}'", t.loss_scale).c_str(),
           "each rank would skip steps on its own non-finite gradients");
    refuse(t.precision == "fp16", "train.precision = \"fp16\"",
           "it uses dynamic loss scaling, and each rank would skip steps on its own non-finite gradients");
  }
  HPDL_CHECK(t.ema_decay >= 0 && t.ema_decay < 1, "{}: train.ema_decay must be in [0, 1) (0: off), got {}", src,
             t.ema_decay);
  if (t.ema_decay > 0) {
    // Each of these leaves a rank without the whole model's current weights after a step.
    auto refuse = [&](bool on, const std::string& key, const char* why) {
      HPDL_CHECK(!on, "{}: train.ema_decay = {} cannot be combined with {}: {}; set one of them off", src,
                 t.ema_decay, key, why);
    };
    refuse(t.pipeline_stages > 1, fmt::format("train.pipeline_stages = {}", t.pipeline_stages),
           "each rank holds one stage's weights");
    refuse(t.tensor_parallel > 1, fmt::format("train.tensor_parallel = {}", t.tensor_parallel),
           "each rank holds slices of the split weights");
    refuse(t.shard_optimizer && t.zero_stage == 3, "train.zero_stage = 3",
           "each rank holds only the parameters it owns");
    refuse(t.local_sgd_steps > 0, fmt::format("train.local_sgd_steps = {}", t.local_sgd_steps),
           "the ranks' weights differ between averaging points");
  }
  positive("train.pipeline_stages", static_cast<double>(t.pipeline_stages));
  positive("train.micro_batches", static_cast<double>(t.micro_batches));
  check_one_of(src, "train.pipeline_schedule", t.pipeline_schedule, {"gpipe", "1f1b"});
  check_one_of(src, "train.pipeline_balance", t.pipeline_balance, {"parameters", "time"});
  HPDL_CHECK(t.pipeline_balance == "parameters" || t.pipeline_split_points.empty(), "{}: train.pipeline_balance = "
             "\"{}\" and train.pipeline_split_points both say where the stages begin; keep one", src,
             t.pipeline_balance);
  HPDL_CHECK(t.micro_batches == 1 || t.pipeline_stages > 1, "{}: train.micro_batches = {} needs train.pipeline_stages "
             "> 1 (micro-batches are how a batch flows through pipeline stages)", src, t.micro_batches);
  if (!t.pipeline_split_points.empty()) {
    const auto& sp = t.pipeline_split_points;
    HPDL_CHECK(static_cast<int64_t>(sp.size()) == t.pipeline_stages - 1, "{}: train.pipeline_split_points has {} "
               "entries; train.pipeline_stages = {} needs {} (where stages 1..{} begin)", src, sp.size(),
               t.pipeline_stages, t.pipeline_stages - 1, t.pipeline_stages - 1);
    for (size_t i = 0; i < sp.size(); ++i)
      HPDL_CHECK(sp[i] >= 1 && (i == 0 || sp[i] > sp[i - 1]), "{}: train.pipeline_split_points[{}] = {}: split points "
                 "must be layer indices from 1, strictly increasing", src, i, sp[i]);
  }
  if (t.pipeline_stages > 1) {
    HPDL_CHECK(c.data.batch_size % t.micro_batches == 0, "{}: data.batch_size = {} is not divisible by "
               "train.micro_batches = {}; every micro-batch must hold the same number of samples", src,
               c.data.batch_size, t.micro_batches);
    // Each of these works on the whole model on every rank, or on gradients all-reduced over every rank.
    auto refuse = [&](bool on, const std::string& key, const char* why) {
      HPDL_CHECK(!on, "{}: train.pipeline_stages = {} cannot be combined with {}: {}; set one of them off", src,
                 t.pipeline_stages, key, why);
    };
    refuse(t.device != "cpu", fmt::format("train.device = \"{}\"", t.device),
           "pipeline stages exchange CPU tensors only");
    refuse(t.sync_batchnorm, "train.sync_batchnorm = true",
           "a stage's batch norm layers normalize each micro-batch on their own rank");
    refuse(t.shard_optimizer && t.zero_stage >= 2, fmt::format("train.zero_stage = {}", t.zero_stage),
           "the stage accumulates its whole gradient over the micro-batches (train.shard_optimizer with "
           "train.zero_stage = 1 shards the stage's optimizer state over its replicas)");
    refuse(t.local_sgd_steps > 0, fmt::format("train.local_sgd_steps = {}", t.local_sgd_steps),
           "the pipeline averages the replicas' gradients at every step");
    refuse(t.accumulate_steps > 1, fmt::format("train.accumulate_steps = {}", t.accumulate_steps),
           "use train.micro_batches to split a batch instead");
    refuse(t.loss_scale != "auto" && t.loss_scale != "none" && t.loss_scale != "1",
           fmt::format("train.loss_scale = '{}'", t.loss_scale), "each stage would unscale and skip steps on its own");
  }
  positive("train.tensor_parallel", static_cast<double>(t.tensor_parallel));
  if (t.tensor_parallel > 1) {
    const int64_t P = t.tensor_parallel;
    auto refuse = [&](bool on, const std::string& key, const char* why) {
      HPDL_CHECK(!on, "{}: train.tensor_parallel = {} cannot be combined with {}: {}; set one of them off", src, P,
                 key, why);
    };
    refuse(c.model.name != "vit", fmt::format("model.name = \"{}\"", c.model.name),
           "only the vit's encoder layers have tensor-parallel versions");
    refuse(t.device != "cpu", fmt::format("train.device = \"{}\"", t.device),
           "the tensor-parallel collectives take CPU tensors only");
    refuse(t.sync_batchnorm, "train.sync_batchnorm = true", "the vit has no batch norm layer to synchronize");
    refuse(t.shard_optimizer && t.zero_stage >= 2, fmt::format("train.zero_stage = {}", t.zero_stage),
           "the split layers' gradients are sharded by the group already (train.shard_optimizer with "
           "train.zero_stage = 1 shards each rank's optimizer state over its replicas)");
    refuse(t.local_sgd_steps > 0, fmt::format("train.local_sgd_steps = {}", t.local_sgd_steps),
           "the ranks of a tensor-parallel group must step together on every batch");
    refuse(t.loss_scale != "auto" && t.loss_scale != "none" && t.loss_scale != "1",
           fmt::format("train.loss_scale = '{}'", t.loss_scale),
           "each rank would check only its own slices' gradients and could skip a step alone");
    const int64_t ff = std::llround(static_cast<double>(c.model.dim) * c.model.mlp_ratio);
    HPDL_CHECK(c.model.heads % P == 0, "{}: train.tensor_parallel = {} does not divide model.heads = {} (each rank "
               "holds heads / P attention heads); use a divisor of {}", src, P, c.model.heads, c.model.heads);
    HPDL_CHECK(ff % P == 0, "{}: train.tensor_parallel = {} does not divide the feed-forward width {} (model.dim {} x "
               "model.mlp_ratio {}; each rank holds width / P of it); use a divisor of {}", src, P, ff, c.model.dim,
               c.model.mlp_ratio, ff);
  }
}

namespace {

// train.activation_checkpointing: the combinations that cannot work, refused by name.
void validate_activation_checkpointing(const Config& c, const std::string& src) {
  const TrainConfig& t = c.train;
  if (!t.activation_checkpointing) return;
  auto refuse = [&](bool on, const std::string& key, const char* why) {
    HPDL_CHECK(!on, "{}: train.activation_checkpointing = true cannot be combined with {}: {}; set one of them off",
               src, key, why);
  };
  refuse(c.model.name == "lstm" || c.model.name == "gru", fmt::format("model.name = \"{}\"", c.model.name),
         "the recurrent stack is one fused layer with nothing to split into segments");
  // Pipeline stages and tensor parallelism take it (design decision 67): each stage checkpoints its
  // own layers per micro-batch; each tensor-parallel encoder layer is one segment whose recompute
  // re-runs its forward allreduce inside backward, in the same order on every rank of the group.
  refuse(t.sync_batchnorm, "train.sync_batchnorm = true",
         "the recompute would exchange the batch statistics a second time, inside backward");
}

}  // namespace

Config parse_config(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
  toml::table t;
  try {
    t = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    HPDL_FAIL("{}:{}:{}: TOML syntax error: {}", source, e.source().begin.line, e.source().begin.column,
              e.description());
  }
  Config c;
  auto keys = bind(c);
  walk(c, t, "", source, keys, paths_of(keys));
  for (auto& o : overrides) apply_override(c, o);
  validate(c, overrides.empty() ? source : source + " (with --set overrides)");
  validate_activation_checkpointing(c, overrides.empty() ? source : source + " (with --set overrides)");
  return c;
}

Config load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  HPDL_CHECK(std::filesystem::is_regular_file(path, ec), "{}: config file not found (see examples/ for configs)",
             path.string());
  std::vector<uint8_t> bytes = io::read_file(path);
  return parse_config(std::string(bytes.begin(), bytes.end()), path.string(), overrides);
}

std::string to_toml(const Config& cfg) {
  Config& c = const_cast<Config&>(cfg);  // bind() takes mutable pointers; nothing is written here
  toml::table root;
  for (auto& k : bind(c)) {
    size_t dot = k.path.find('.');
    std::string section = k.path.substr(0, dot), leaf = k.path.substr(dot + 1);
    if (!root.contains(section)) root.insert(section, toml::table{});
    toml::table& sec = *root[section].as_table();
    std::visit(
        [&](auto* f) {
          using T = std::remove_pointer_t<decltype(f)>;
          if constexpr (std::is_same_v<T, uint64_t>) {
            sec.insert(leaf, static_cast<int64_t>(*f));
          } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>>) {
            toml::array a;
            for (auto v : *f) a.push_back(v);
            sec.insert(leaf, a);
          } else if constexpr (std::is_same_v<T, std::vector<LayerSpec>>) {
            if (f->empty()) return;
            toml::array a;
            for (auto& l : *f)
              a.push_back(toml::table{{"type", l.type}, {"out_channels", l.out_channels},
                                      {"out_features", l.out_features}, {"kernel_size", l.kernel_size},
                                      {"stride", l.stride}, {"padding", l.padding}, {"bias", l.bias}, {"p", l.p}});
            sec.insert(leaf, a);
          } else {
            sec.insert(leaf, *f);
          }
        },
        k.field);
  }
  std::ostringstream out;
  out << "# hpdl resolved training config (defaults filled in, --set overrides applied)\n" << root << "\n";
  return out.str();
}

nlohmann::json to_json(const Config& cfg) {
  Config& c = const_cast<Config&>(cfg);
  nlohmann::json j = nlohmann::json::object();
  for (auto& k : bind(c)) {
    size_t dot = k.path.find('.');
    auto& sec = j[k.path.substr(0, dot)];
    const std::string leaf = k.path.substr(dot + 1);
    std::visit(
        [&](auto* f) {
          using T = std::remove_pointer_t<decltype(f)>;
          if constexpr (std::is_same_v<T, std::vector<LayerSpec>>) {
            sec[leaf] = nlohmann::json::array();
            for (auto& l : *f)
              sec[leaf].push_back({{"type", l.type}, {"out_channels", l.out_channels}, {"out_features", l.out_features},
                                   {"kernel_size", l.kernel_size}, {"stride", l.stride}, {"padding", l.padding},
                                   {"bias", l.bias}, {"p", l.p}});
          } else {
            sec[leaf] = *f;
          }
        },
        k.field);
  }
  return j;
}

void save_config(const Config& config, const std::filesystem::path& path) {
  const std::string text = to_toml(config);
  io::write_file_atomic(path, text.data(), text.size());
}

}  // namespace hpdl::train

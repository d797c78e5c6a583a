// The training configuration: one typed struct with defaults, read from TOML.
// Every key is checked: an unknown key (with a did-you-mean suggestion), a
// wrong type or an out-of-range value is an hpdl::Error naming the file (or
// the --set argument) and the key path. The resolved config is written back
// as TOML (config.toml in the run directory) and as JSON (checkpoint sidecars).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace hpdl::train {

// One entry of [[model.layers]] for model.name = "custom". type is one of
// conv2d, linear, relu, maxpool2d, avgpool2d, batchnorm2d, dropout, flatten.
struct LayerSpec {
  std::string type;
  int64_t out_channels = 0;  // conv2d
  int64_t out_features = 0;  // linear
  int64_t kernel_size = 3;   // conv2d, pools
  int64_t stride = 1;        // conv2d, pools
  int64_t padding = 0;       // conv2d
  bool bias = true;          // conv2d, linear
  double p = 0.5;            // dropout
};

struct DataConfig {
  std::string dataset = "fashion-mnist";  // fashion-mnist | mnist | npy | csv | hdf5 | store
  std::string path;                       // dataset directory or file (hdf5: the .h5 file); "" = the dataset's default
  // dataset = "hdf5": the datasets inside data.path holding the training samples
  // ([N, C, H, W], [N, H, W] or [N, F]; uint8, float32, float64) and their integer
  // labels [N], and the same for the test split (docs/files.md).
  std::string hdf5_x = "train/images";
  std::string hdf5_y = "train/labels";
  std::string hdf5_test_x = "test/images";
  std::string hdf5_test_y = "test/labels";
  std::string store;                      // packed data store to read instead of files; "" = none
  int64_t batch_size = 64;                // per rank
  int64_t workers = 2;                    // DataLoader threads
  int64_t prefetch = 2;                   // batches prepared ahead
  bool pin_memory = false;                // train.device = "cuda": batches in page-locked memory, async uploads
  bool shuffle = true;
  bool drop_last = false;
  bool random_crop = false;               // augmentation: random crop with zero padding
  int64_t crop_padding = 4;
  bool random_flip = false;               // augmentation: random horizontal flip
  bool normalize = true;
  std::vector<double> mean{0.2860};       // per channel (or one for all); Fashion-MNIST's
  std::vector<double> std{0.3530};
  // Training samples held out for validation (the last N of the training set;
  // 0: none). The trainer then also reports val_loss/val_accuracy each epoch,
  // and `hpdl tune` selects on them instead of the test set.
  int64_t validation = 0;
};

struct ModelConfig {
  std::string name = "mlp";  // mlp | lenet5 | resnet20 | resnet18 | resnet50 | alexnet_bn | vgg11_bn | vgg16_bn | lstm | gru | vit | custom
  int64_t num_classes = 10;
  int64_t in_channels = 1;
  std::vector<int64_t> hidden{256, 128};  // mlp hidden widths; lstm/gru: one size per layer
  std::vector<LayerSpec> layers;          // custom
  // vit (nn/models/vit.h): patch side, embedding width, encoder layers,
  // attention heads (dividing dim), feed-forward width / dim.
  int64_t patch_size = 4, dim = 64, depth = 4, heads = 4;
  double mlp_ratio = 2.0;
  // Dropout probability in [0, 1) for mlp (after each hidden activation),
  // alexnet_bn and vgg*_bn (the classifier) and vit (attention weights, the
  // feed-forward and the residual branches); -1: the model's default (0.5 for
  // alexnet_bn and vgg*_bn, none otherwise). Other models have no dropout
  // (a custom model takes dropout layers).
  double dropout = -1.0;
};

struct OptimizerConfig {
  std::string name = "sgd";  // sgd | adamw | lars | lamb
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  double eta = 0.001;  // LARS trust coefficient
  std::vector<double> betas{0.9, 0.999};
  double eps = 1e-8;
  std::string lr_scaling = "none";  // none | linear: lr * global_batch / base_batch (Goyal et al. 2017)
  int64_t base_batch = 256;
  // Clip the global gradient norm (after the allreduce, so every rank clips
  // alike) to at most this before each step; 0: off.
  double clip_grad_norm = 0;
};

struct ScheduleConfig {
  std::string name = "constant";  // constant | step | cosine | poly
  double warmup_epochs = 0;
  std::vector<int64_t> milestones;  // step: epochs at which lr *= gamma
  double gamma = 0.1;
  double power = 2.0;    // poly
  double final_lr = 0;   // cosine and poly end here
};

struct TrainConfig {
  int64_t epochs = 10;
  uint64_t seed = 0;
  int64_t threads = 0;  // 0: all cores (OMP_NUM_THREADS)
  std::string device = "cpu";
  // fp32 | bf16 | fp16 (bf16 and fp16: conv/matmul on CUDA tensor cores, float32 master weights)
  std::string precision = "fp32";
  // Channels-last (NHWC) activations: on the CPU (oneDNN), float32 convolutions and the
  // batch norms, pools and elementwise ops after them keep NHWC tensors, so oneDNN does not
  // reorder every activation into its blocked layout and back (design decision 75); on
  // CUDA, bf16 autocast lays convolution inputs out NHWC for cuDNN's tensor cores.
  // Weights, gradients of weights and checkpoints are row-major either way.
  bool channels_last = true;
  // Loss scaling (optim::GradScaler): "auto" (dynamic for fp16, none otherwise),
  // "dynamic", "none", or a fixed positive number ("1024"; 1 is none). A TOML
  // number is accepted too and kept as its text.
  std::string loss_scale = "auto";
  std::string run_dir = "runs/default";
  int64_t checkpoint_every_steps = 0;  // 0: off
  int64_t checkpoint_every_epochs = 1;  // 0: off
  int64_t keep_checkpoints = 3;
  // Write checkpoints on a background thread (train::AsyncCheckpointWriter):
  // training waits only for a snapshot of the state (and for the previous
  // write, if it is still going), not for the files and their fsyncs.
  bool checkpoint_async = false;
  // A fresh run (no --resume) refuses a run_dir that holds checkpoints of an
  // earlier run: its checkpoint files would be overwritten and pruned, and its
  // metrics mixed with the new run's. true: start over, removing that run's
  // checkpoints, metrics.jsonl, summary.json and report.html first.
  bool overwrite = false;
  bool trace = false;
  int64_t log_every = 50;
  int64_t eval_every_epochs = 1;
  int64_t max_steps = 0;  // 0: no limit
  // End the run (with a checkpoint) after this epoch, counted from 1 across
  // resumes, while the lr schedule still spans train.epochs: a long run cut
  // into chunks (one per batch job), and how `hpdl tune` trains a trial part
  // of the way. 0: off.
  int64_t stop_after_epoch = 0;
  // Model selection (design decision 72; docs/files.md). The metric compared after each
  // evaluation: "auto" (val_loss with data.validation > 0, else test_loss: model selection on the
  // test set, which a warning says), or val_ / test_ with loss and accuracy (train.loss =
  // cross_entropy) or loss, rmse, mae, r2 (regression losses). Lower wins for loss, rmse and mae,
  // higher for accuracy and r2.
  std::string monitor = "auto";
  // Write the model of each evaluation that improves the monitored metric to
  // RUN_DIR/checkpoints/best.safetensors (atomically; never pruned; its metadata and summary.json
  // say the epoch, step and value). `hpdl eval|predict|export|explain --checkpoint RUN --best` read it.
  bool keep_best = false;
  // End the run (with a checkpoint) when the monitored metric has not improved by more than
  // early_stopping_min_delta for this many consecutive evaluations (train.eval_every_epochs); 0: off.
  // The count survives --resume, and a run that stopped early does not train further when resumed.
  int64_t early_stopping_patience = 0;
  double early_stopping_min_delta = 0;
  // Label smoothing of the training loss (Szegedy et al. 2016): the target
  // keeps 1 - eps + eps/C and every class gets eps/C. Evaluation stays plain.
  double label_smoothing = 0;
  // The loss (hpdl/train/objective.h): cross_entropy (classification, integer
  // labels, accuracy) | mse | l1 | huber (regression: float targets [N, k] with
  // k = model.num_classes outputs; RMSE, MAE, R^2). label_smoothing is refused
  // with a regression loss.
  std::string loss = "cross_entropy";
  double huber_delta = 1.0;  // huber: quadratic for |residual| <= delta, linear beyond
  // Gradient accumulation: each optimizer step sums the gradients of this
  // many consecutive batches (weighted by their sizes), so a step sees
  // data.batch_size x ranks x accumulate_steps samples with one batch's
  // activation memory; DataParallel all-reduces only on the last of them.
  // Steps, the lr schedule, train.max_steps and checkpoints count optimizer steps.
  int64_t accumulate_steps = 1;
  // Synchronized batch norm under MPI: statistics over the global batch
  // (dist::convert_sync_batchnorm); false: each rank normalizes its own batch.
  bool sync_batchnorm = false;
  // With sync_batchnorm: the statistics are shared by groups of this many
  // consecutive ranks (must divide the world size); 0: all ranks.
  int64_t sync_batchnorm_group = 0;
  double bucket_mb = 25;   // DataParallel gradient bucket size, MiB
  bool bf16_wire = false;  // all-reduce gradients as bfloat16 (half the bytes, rounded)
  // PowerSGD gradient compression (dist/powersgd.h): weight gradients travel
  // as rank-r factors with error feedback; 0: off. From optimizer step
  // powersgd_start_step on (plain allreduce before). Data parallelism on CPU
  // ranks; refused with bf16_wire, zero_stage 2 and 3, local_sgd_steps,
  // pipeline_stages > 1 and tensor_parallel > 1.
  int64_t powersgd_rank = 0;
  int64_t powersgd_start_step = 0;
  // All-reduce gradient buckets node by node (dist::Communicator::set_hierarchical):
  // reduce-scatter inside each node, allreduce across nodes, allgather inside the
  // node. CPU ranks over MPI; used when every node runs the same number (> 1) of
  // ranks and there are several nodes (summary.json says whether it was).
  bool hierarchical_allreduce = false;
  // ZeRO stage 1 under MPI: each rank keeps optimizer state only for the
  // parameters it owns (dist::ShardedOptimizer); checkpoints are unchanged.
  bool shard_optimizer = false;
  // With shard_optimizer: 1 keeps full gradients on every rank (ZeRO-1); 2
  // also shards them (ZeRO-2): each gradient bucket is reduced to the owner of
  // its parameters, and other ranks free it once sent. CPU ranks; refused
  // with accumulate_steps > 1, bf16_wire and loss scaling. 3 also shards the
  // parameters (ZeRO-3, dist::Zero3): a rank holds only its owned ones between
  // units; each unit (a layer of the model's top-level Sequential, nested
  // Sequentials opened) gathers its parameters around a checkpointed forward
  // and again for its recompute in backward. Models that are an nn::Sequential
  // (mlp, lenet5, resnet*, alexnet_bn, vgg*_bn, custom); refused also with
  // sync_batchnorm.
  int64_t zero_stage = 1;
  // With zero_stage = 3: queue each unit's parameter gather one unit ahead
  // (the next unit's in forward, the previous one's in backward), so it
  // travels while the current unit computes. Results are bitwise the same on
  // or off; on costs a larger kept gather buffer (the two largest neighbouring
  // units' non-owned parameters instead of the largest unit's).
  bool zero3_prefetch = true;
  // Local SGD (periodic model averaging; Stich 2019, Lin et al. 2020) under
  // MPI: each rank takes this many optimizer steps on its own gradients, with
  // no gradient allreduce, then the parameters and floating-point buffers are
  // averaged over the ranks in one allreduce. Also averaged: at the end of
  // every epoch and before every checkpoint, so evaluation, checkpoints and
  // the replica check see one model. Optimizer state stays per rank (saved
  // per rank in checkpoints). 0: off (synchronous data parallel). Refused
  // with shard_optimizer, sync_batchnorm, bf16_wire and loss scaling.
  int64_t local_sgd_steps = 0;
  // With local_sgd_steps: also average the optimizer's floating-point state
  // (momentum, Adam moments) at every averaging point.
  bool local_sgd_average_optimizer = false;
  // Pipeline parallelism (dist::Pipeline; GPipe, Huang et al. 2019) under
  // MPI: the model (a sequence of layers: an nn::Sequential's leaves, or a
  // vit's embedding, encoder layers and head) is cut into this many stages,
  // one per rank (or per tensor-parallel group), and the world is a grid of
  // data-parallel replicas of the pipeline. 1: off. Refused with
  // sync_batchnorm, zero_stage 2 and 3, local_sgd_steps, accumulate_steps > 1,
  // loss scaling and GPU ranks.
  int64_t pipeline_stages = 1;
  // With pipeline_stages > 1: micro-batches per batch (must divide
  // data.batch_size), and their order: "gpipe" (all forwards, then all
  // backwards) or "1f1b" (one forward, one backward in turn; less memory).
  int64_t micro_batches = 1;
  std::string pipeline_schedule = "gpipe";
  // With pipeline_stages > 1: where stages 1..S-1 begin, as layer indices
  // (S - 1 of them, strictly increasing, from 1); empty: stages balanced by
  // parameter count. Parameters are not compute: a CNN's first layers hold
  // few parameters and most of the work.
  std::vector<int64_t> pipeline_split_points;
  // Without split points, what the stages are balanced by: "parameters" (the
  // default: the cut is the same in every run) or "time" (each layer's
  // forward and backward timed on one micro-batch at start-up, every rank
  // alike; balances the work).
  std::string pipeline_balance = "parameters";
  // Tensor parallelism (dist/tensor_parallel.h; Megatron-LM, Shoeybi et al.
  // 2019) under MPI: groups of this many consecutive ranks split each vit
  // encoder layer's attention heads and feed-forward width between them, and
  // the world is world / tensor_parallel data-parallel replicas of a group.
  // 1: off. model.name = "vit" only; refused with pipeline_stages > 1,
  // sync_batchnorm, shard_optimizer, local_sgd_steps, clip_grad_norm, loss
  // scaling and GPU ranks, and when it does not divide model.heads or the
  // feed-forward width.
  int64_t tensor_parallel = 1;
  // Activation checkpointing (ops/checkpoint.h): each residual block (resnet*),
  // encoder layer (vit) or about sqrt(n) layers of a flat model (mlp, lenet5,
  // alexnet_bn, vgg*_bn, custom) keeps only its input; its activations are
  // recomputed in backward. Same losses and gradients, less memory, about one
  // more forward per step. Refused for lstm/gru and with pipeline_stages > 1,
  // tensor_parallel > 1 and sync_batchnorm.
  bool activation_checkpointing = false;
  // Exponential moving average of the weights (optim::ModelEma; Polyak averaging):
  // after each optimizer step avg <- d avg + (1 - d) w for the parameters
  // and batch-norm statistics. Evaluation, the test metrics, hpdl eval / predict /
  // export / explain use the averages; training continues from the live
  // weights; checkpoints hold both (ema.<name>). 0: off; otherwise in (0, 1),
  // typically 0.999 to 0.9999. Refused with pipeline_stages > 1,
  // tensor_parallel > 1, zero_stage = 3 and local_sgd_steps > 0.
  double ema_decay = 0;
  // With ema_decay: the decay of update n is min(ema_decay, (1 + n) / (10 + n)),
  // so the first, random weights fade out within tens of steps.
  bool ema_warmup = true;
};

struct Config {
  DataConfig data;
  ModelConfig model;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainConfig train;
};

// Reads `path`, applies `overrides` ("a.b=value", TOML value syntax; a string
// may be given unquoted) in order, then checks ranges and names. Throws
// hpdl::Error naming the file or the override and the key path.
Config load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});
// The same for TOML text; `source` names it in errors.
Config parse_config(const std::string& toml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});
// Applies one "a.b=value" override (without validate()).
void apply_override(Config& config, const std::string& assignment);
// Range and name checks; `source` names the origin in the message.
void validate(const Config& config, const std::string& source);

// The resolved config as TOML text that parse_config reads back to an equal config.
std::string to_toml(const Config& config);
nlohmann::json to_json(const Config& config);
// Writes to_toml(config) atomically to `path`.
void save_config(const Config& config, const std::filesystem::path& path);

// Every settable key path ("data.batch_size", ...), for help texts.
std::vector<std::string> config_keys();

// train.loss_scale as a number: 0 for "auto" and "dynamic" (the caller decides
// what auto means), 1 for "none", the value for a positive finite number;
// nullopt for anything else.
std::optional<double> loss_scale_value(const std::string& loss_scale);

// Levenshtein distance, for did-you-mean suggestions.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace hpdl::train

#pragma once
// The distillation loop of `refine distill` (DESIGN §4, §6): micro-batches from the DataLoader,
// soft targets from a TeacherSource, forward/backward of the TrainableModel, gradient accumulation,
// clipping, AdamW with warmup + cosine, periodic held-out evaluation, a JSONL metrics log, and
// atomic checkpoints that a killed run resumes from with the same trajectory.
//
// Output directory layout (`out`):
//   config.json, model.safetensors, tokenizer files, refinery.json   the student (HF layout),
//                                                                     rewritten at every checkpoint
//   train/metrics.jsonl        one JSON object per step ({"step", "loss", "kd", "ce", "grad_norm",
//                              "lr", "tokens", "tokens_per_s"}) and per evaluation ({"step",
//                              "eval": {"loss", "kd", "ce", "perplexity", "positions"}})
//   train/checkpoint/          optimizer.safetensors (f32 master weights + moments) and
//                              buffers.safetensors (the MoE correction biases) and
//                              state.json ({"step", "epoch", "position", "seed", ...}); replaced as
//                              a whole (written as checkpoint.new, then renamed)
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data_loader.hpp"
#include "distill/losses.hpp"
#include "distill/teacher_source.hpp"
#include "engine/train/adamw.hpp"
#include "engine/train/lr_schedule.hpp"
#include "engine/train/optimizer.hpp"
#include "engine/train/trainable_model.hpp"

namespace refinery::distill {

struct TrainerOptions {
  int64_t steps = 100;             // optimizer steps
  int64_t grad_accum = 1;          // micro-batches per step
  train::LrSchedule schedule;      // total_steps is set to `steps` when 0
  train::AdamWOptions adamw;
  double max_grad_norm = 1.0;      // 0: no clipping
  // DeepSeek-V3 auxiliary-loss-free balancing of students with a score-correction bias
  // (TrainableModel::update_correction_bias), applied after every step; 0: off.
  double bias_update_rate = 1e-3;
  LossOptions loss;
  std::string teacher_tail = "bucket";  // a top-k cache's tail handling (recorded for --resume)
  int64_t eval_every = 0;          // steps between held-out evaluations; 0: only at the end
  int64_t eval_windows = 16;       // held-out windows per evaluation (at most the held-out split)
  int64_t save_every = 0;          // steps between checkpoints; 0: only at the end
  DType save_dtype = DType::kBF16; // the student's weights on disk
  int64_t log_every = 1;           // steps between progress lines on stderr
  std::filesystem::path out;
  bool resume = false;
  // Recorded in checkpoints so that --resume refuses other data or another data order.
  uint64_t seed = 0;               // the data order's seed
  std::string data_fingerprint;    // e.g. io::data_fingerprint of the token stream
  nlohmann::json student_config;   // written as out/config.json (dtype updated)
  nlohmann::json provenance;       // written as out/refinery.json
  std::vector<std::filesystem::path> tokenizer_files;  // copied into out/
};

struct TrainerResult {
  int64_t steps_done = 0;
  double last_loss = 0.0;
  nlohmann::json last_eval;  // null when no evaluation ran
};

class Trainer {
 public:
  // `teacher` may be null when the loss has no KD term.
  Trainer(train::TrainableModel& model, TeacherSource* teacher, DataLoader& data,
          TrainerOptions options);
  TrainerResult run();
  // User error when `out` is a file, or holds a previous run (a checkpoint or a metrics log) and
  // `resume` is false. run() checks it too; the CLI calls it first so that nothing loads before the refusal.
  static void check_output_directory(const std::filesystem::path& out, bool resume);
  // Held-out evaluation of the current weights: loss terms over the first eval_windows held-out
  // windows.
  nlohmann::json evaluate();

 private:
  void save_checkpoint(int64_t step);
  void save_buffers(const std::filesystem::path& file) const;  // non-trainable parameters
  void load_buffers(const std::filesystem::path& file);
  int64_t restore_checkpoint();  // returns the step to continue from (0 without a checkpoint)
  void write_student();

  train::TrainableModel& model_;
  TeacherSource* teacher_;
  DataLoader& data_;
  TrainerOptions options_;
  std::unique_ptr<train::ModelOptimizer> optimizer_;
  nlohmann::json last_eval_;  // {"step", "eval"} of the latest evaluation; null before one
};

}  // namespace refinery::distill

// The distillation loop: steps, evaluation, metrics, checkpoints and resume.
#include "distill/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/io/safetensors_writer.hpp"

namespace refinery::distill {

namespace fs = std::filesystem;

namespace {

const char* dtype_json_name(DType d) { return d == DType::kF32 ? "float32" : "bfloat16"; }

const char* divergence_name(backend::Divergence d) {
  switch (d) {
    case backend::Divergence::kForwardKl: return "forward_kl";
    case backend::Divergence::kReverseKl: return "reverse_kl";
    case backend::Divergence::kJsd: return "jsd";
    case backend::Divergence::kSkewKl: return "skew_kl";
  }
  return "?";
}

// The options a resumed run must share with the run that wrote the checkpoint: otherwise the
// trajectory would silently change. Keys are the CLI's option names where there is one, so that
// a mismatch reads as its fix.
nlohmann::json run_identity(const DataLoader& data, const TrainerOptions& o) {
  return {{"--seq-len", data.seq_len()},
          {"--batch", data.batch_size()},
          {"--grad-accum", o.grad_accum},
          {"train windows (--data, --held-out)", data.train_windows()},
          {"held-out windows (--data, --held-out)", data.held_out_windows()},
          {"--seed", o.seed},
          {"--steps", o.steps},
          {"--lr", o.schedule.peak_lr},
          {"--warmup", o.schedule.warmup_steps},
          {"--min-lr-ratio", o.schedule.min_lr_ratio},
          {"--weight-decay", o.adamw.weight_decay},
          {"--beta1", o.adamw.beta1},
          {"--beta2", o.adamw.beta2},
          {"--eps", o.adamw.eps},
          {"--max-grad-norm", o.max_grad_norm},
          {"--loss", divergence_name(o.loss.divergence)},
          {"--temperature", o.loss.temperature},
          {"--beta", o.loss.beta},
          {"--alpha", o.loss.alpha},
          {"--kd-weight", o.loss.kd_weight},
          {"--ce-weight", o.loss.ce_weight},
          {"--teacher-tail", o.teacher_tail}};
}

// "--seq-len 32 in the checkpoint but 16 now; ..." for every field that differs.
std::string describe_identity_mismatch(const nlohmann::json& saved, const nlohmann::json& now) {
  std::string out;
  for (const auto& [key, value] : now.items()) {
    const std::string was = saved.contains(key) ? saved[key].dump() : std::string("(absent)");
    if (!saved.contains(key) || saved[key] != value)
      out += (out.empty() ? "" : "; ") + key + " " + was + " in the checkpoint but " +
             value.dump() + " now";
  }
  return out;
}

}  // namespace

Trainer::Trainer(train::TrainableModel& model, TeacherSource* teacher, DataLoader& data,
                 TrainerOptions options)
    : model_(model), teacher_(teacher), data_(data), options_(std::move(options)) {
  if (options_.steps < 1) throw_user_error("--steps is ", options_.steps, "; it must be >= 1");
  if (options_.grad_accum < 1)
    throw_user_error("--grad-accum is ", options_.grad_accum, "; it must be >= 1");
  if (options_.max_grad_norm < 0.0 || !std::isfinite(options_.max_grad_norm))
    throw_user_error("--max-grad-norm is ", options_.max_grad_norm, "; use 0 (off) or a positive number");
  if (options_.schedule.total_steps == 0) options_.schedule.total_steps = options_.steps;
  options_.schedule.validate();
  validate_options(options_.loss);
  if (options_.loss.kd_weight > 0.0 && teacher_ == nullptr)
    throw_user_error("the loss has a KD term (--kd-weight ", options_.loss.kd_weight,
                     ") but no teacher: pass --teacher MODEL or --teacher-logits CACHE.h5, or "
                     "train on labels alone with --kd-weight 0 --ce-weight 1");
  if (teacher_ != nullptr && teacher_->vocab_size() != model_.config().vocab_size)
    throw_user_error("the teacher's vocabulary has ", teacher_->vocab_size(),
                     " tokens but the student's has ", model_.config().vocab_size,
                     "; distillation needs the same tokenizer for both");
  optimizer_ = std::make_unique<train::ModelOptimizer>(model_.parameters(), model_.backend(),
                                                       options_.adamw);
}

nlohmann::json Trainer::evaluate() {
  const int64_t n = std::min(options_.eval_windows, data_.held_out_windows());
  train::LossSums sums;
  for (int64_t i = 0; i < n; ++i) {
    const auto tokens = data_.held_out_window(i);
    const int64_t window = data_.train_windows() + i;
    train::TeacherTargets targets;
    if (teacher_ != nullptr) targets = teacher_->targets(tokens, 1, std::span(&window, 1));
    sums += model_.evaluate(tokens, 1, targets, options_.loss);
  }
  const double pos = std::max<int64_t>(sums.positions, 1);
  const double kd = sums.kd / pos, ce = sums.ce / pos;
  const double t = options_.loss.temperature;
  return {{"loss", options_.loss.kd_weight * t * t * kd + options_.loss.ce_weight * ce},
          {"kd", kd},
          {"ce", ce},
          {"perplexity", std::exp(ce)},
          {"positions", sums.positions},
          {"windows", n}};
}

void Trainer::write_student() {
  const fs::path& out = options_.out;
  nlohmann::json config = options_.student_config;
  config["dtype"] = dtype_json_name(options_.save_dtype);
  if (config.contains("torch_dtype")) config["torch_dtype"] = dtype_json_name(options_.save_dtype);
  io::write_file_atomically(out / "config.json", config.dump(2) + "\n");
  model_.parameters().save_weights(out, options_.save_dtype, model_.backend());
  for (const fs::path& f : options_.tokenizer_files)
    if (fs::exists(f)) fs::copy_file(f, out / f.filename(), fs::copy_options::overwrite_existing);
  if (!options_.provenance.is_null()) {
    // DESIGN §5: the provenance carries the metrics the pass measured (the latest held-out
    // evaluation of these weights, when one ran).
    nlohmann::json provenance = options_.provenance;
    if (!last_eval_.is_null()) provenance["metrics"] = last_eval_;
    io::write_file_atomically(out / "refinery.json", provenance.dump(2) + "\n");
  }
}

// Parameters the optimizer does not own (DeepSeek-V3's e_score_correction_bias, moved by the
// load balancing, not by gradients) are part of the run's state too: f32, by name.
void Trainer::save_buffers(const fs::path& file) const {
  std::vector<Tensor> host;
  std::vector<io::TensorToWrite> tensors;
  for (const train::Parameter& p : model_.parameters().params()) {
    if (p.trainable) continue;
    host.push_back(model_.backend().download(p.master));  // only read by the writer
    const Tensor& h = host.back();
    tensors.push_back({p.name, DType::kF32, p.shape,
                       std::span<const std::byte>(static_cast<const std::byte*>(h.data()), h.nbytes()),
                       nullptr});
  }
  io::write_safetensors(file, tensors);
}

void Trainer::load_buffers(const fs::path& file) {
  const bool any = std::any_of(model_.parameters().params().begin(),
                               model_.parameters().params().end(),
                               [](const train::Parameter& p) { return !p.trainable; });
  if (!any) return;
  if (!fs::exists(file))
    throw_user_error(file.string(), " is missing from the checkpoint (it holds the MoE "
                     "correction biases); delete ", options_.out.string(), " to start over");
  const auto st = io::SafetensorsFile::open(file);
  for (train::Parameter& p : model_.parameters().params()) {
    if (p.trainable) continue;
    const io::TensorEntry* e = st.find(p.name);
    if (e == nullptr || e->dtype != DType::kF32 || e->shape != p.shape)
      throw_user_error(file.string(), ": tensor ", p.name, " is missing or has another shape; "
                       "the checkpoint belongs to another model; delete ", options_.out.string(),
                       " to start over");
    Tensor h = Tensor::empty(DType::kF32, p.shape);
    std::memcpy(h.mutable_data(), st.bytes(*e).data(), h.nbytes());
    p.master.copy_from(model_.backend().upload(h));
    if (p.compute.data() != p.master.data()) model_.backend().convert(p.master, p.compute);
  }
}

void Trainer::save_checkpoint(int64_t step) {
  const fs::path dir = options_.out / "train";
  const fs::path ck = dir / "checkpoint", fresh = dir / "checkpoint.new", old = dir / "checkpoint.old";
  fs::remove_all(fresh);
  fs::create_directories(fresh);
  optimizer_->save(fresh / "optimizer.safetensors");
  save_buffers(fresh / "buffers.safetensors");
  nlohmann::json state = {{"step", step},
                          {"epoch", data_.cursor().epoch},
                          {"position", data_.cursor().position},
                          {"optimizer_steps", optimizer_->step_count()},
                          {"run", run_identity(data_, options_)}};
  io::write_file_atomically(fresh / "state.json", state.dump(2) + "\n");
  // Swap directories: a crash leaves either the old or the new checkpoint complete.
  fs::remove_all(old);
  if (fs::exists(ck)) fs::rename(ck, old);
  fs::rename(fresh, ck);
  fs::remove_all(old);
  write_student();
}

int64_t Trainer::restore_checkpoint() {
  const fs::path dir = options_.out / "train";
  const fs::path ck = dir / "checkpoint", fresh = dir / "checkpoint.new", old = dir / "checkpoint.old";
  fs::remove_all(fresh);  // an unfinished checkpoint
  if (!fs::exists(ck) && fs::exists(old)) fs::rename(old, ck);
  if (!fs::exists(ck / "state.json")) {
    log::warn("--resume: no checkpoint in ", dir.string(), "; starting from step 0");
    return 0;
  }
  nlohmann::json state;
  try {
    std::ifstream in(ck / "state.json");
    state = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw_user_error((ck / "state.json").string(), " cannot be read (", e.what(),
                     "); delete ", dir.string(), " to start over");
  }
  const nlohmann::json identity = run_identity(data_, options_);
  const nlohmann::json saved = state.value("run", nlohmann::json::object());
  if (saved != identity)
    throw_user_error("--resume: the checkpoint in ", ck.string(), " was made with other options (",
                     describe_identity_mismatch(saved, identity),
                     "); resume with the options of the interrupted run, or choose another --out");
  optimizer_->load(ck / "optimizer.safetensors");
  load_buffers(ck / "buffers.safetensors");
  optimizer_->set_step_count(state.at("optimizer_steps").get<int64_t>());
  data_.seek(Cursor{state.at("epoch").get<int64_t>(), state.at("position").get<int64_t>()});
  return state.at("step").get<int64_t>();
}

void Trainer::check_output_directory(const fs::path& out, bool resume) {
  if (out.empty()) throw_user_error("--out is empty; give the directory to write the student to");
  if (fs::exists(out) && !fs::is_directory(out))
    throw_user_error("--out ", out.string(), " is a file, not a directory; give a directory "
                     "(it is created if missing)");
  if (resume) return;
  // A run killed before its first checkpoint leaves only the metrics log: appending a new run to
  // it would mix two trajectories.
  for (const fs::path& p : {out / "train" / "checkpoint", out / "train" / "checkpoint.old",
                            out / "train" / "metrics.jsonl"})
    if (fs::exists(p))
      throw_user_error(out.string(), " already holds a training run (", p.string(),
                       "); pass --resume to continue it, or choose another --out");
}

TrainerResult Trainer::run() {
  const fs::path& out = options_.out;
  check_output_directory(out, options_.resume);
  fs::create_directories(out / "train");
  const fs::path metrics_path = out / "train" / "metrics.jsonl";
  int64_t start = 0;
  if (options_.resume) {
    start = restore_checkpoint();
    // Keep the log lines of the steps the checkpoint holds; later ones are redone identically.
    std::vector<std::string> kept;
    std::ifstream in(metrics_path);
    for (std::string line; std::getline(in, line);) {
      try {
        if (nlohmann::json::parse(line).value("step", int64_t{0}) <= start) kept.push_back(line);
      } catch (const std::exception&) {  // a torn last line of a killed run
      }
    }
    std::string text;
    for (const auto& l : kept) text += l + "\n";
    io::write_file_atomically(metrics_path, text);
    if (start > 0) log::info("resuming at step ", start, " of ", options_.steps);
  }
  std::ofstream metrics(metrics_path, std::ios::app);

  const int64_t b = data_.batch_size(), len = data_.seq_len();
  const int64_t step_positions =
      options_.grad_accum * train::TrainableModel::counted_positions(b * len, b);
  const double grad_scale = 1.0 / static_cast<double>(step_positions);
  const double t = options_.loss.temperature;
  TrainerResult result;
  result.steps_done = start;  // a finished run resumed again does nothing
  const auto run_start = std::chrono::steady_clock::now();
  auto last_log = run_start;
  for (int64_t step = start; step < options_.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    model_.parameters().defer_zero_grad(model_.backend());  // forward_backward finishes it
    train::LossSums sums;
    for (int64_t m = 0; m < options_.grad_accum; ++m) {
      const std::vector<int32_t> tokens = data_.next_batch();
      train::TeacherTargets targets;
      if (teacher_ != nullptr) {
        targets = teacher_->targets(tokens, b, data_.last_batch_windows());
        // The next micro-batch's teacher forward may start now (PrefetchingTeacher).
        if (step + 1 < options_.steps || m + 1 < options_.grad_accum)
          teacher_->prefetch(data_.peek_next_batch(), b);
      }
      sums += model_.forward_backward(tokens, b, targets, options_.loss, grad_scale);
    }
    const double norm = optimizer_->clip(options_.max_grad_norm);
    const double lr = options_.schedule.lr(step);
    if (std::isfinite(norm)) {
      optimizer_->step(lr);
    } else {
      log::warn("step ", step + 1, ": the gradient norm is ", norm,
                "; the update is skipped (lower --lr or raise --warmup if this repeats)");
    }
    const double imbalance = model_.update_correction_bias(options_.bias_update_rate);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double pos = std::max<int64_t>(sums.positions, 1);
    const double kd = sums.kd / pos, ce = sums.ce / pos;
    const double loss = options_.loss.kd_weight * t * t * kd + options_.loss.ce_weight * ce;
    const int64_t tokens = options_.grad_accum * b * len;
    nlohmann::json line = {{"step", step + 1}, {"loss", loss},   {"kd", kd},
                           {"ce", ce},         {"grad_norm", norm}, {"lr", lr},
                           {"tokens", tokens}, {"tokens_per_s", tokens / seconds}};
    if (imbalance > 0.0) line["expert_load_max"] = imbalance;  // max load / mean load
    metrics << line.dump() << "\n" << std::flush;
    result.last_loss = loss;
    const bool last = step + 1 == options_.steps;
    const auto now = std::chrono::steady_clock::now();
    if ((options_.log_every > 0 && (step + 1) % options_.log_every == 0) || last ||
        std::chrono::duration<double>(now - last_log).count() > 30.0) {
      last_log = now;
      // ETA from the mean step time of this process (evaluations and checkpoints included).
      const double elapsed = std::chrono::duration<double>(now - run_start).count();
      const double eta = elapsed / static_cast<double>(step + 1 - start) *
                         static_cast<double>(options_.steps - step - 1);
      log::info("step ", step + 1, "/", options_.steps, "  loss ", loss, "  kd ", kd, "  ce ", ce,
                "  |g| ", norm, "  lr ", lr, "  ", static_cast<int64_t>(tokens / seconds),
                " tok/s  ETA ", static_cast<int64_t>(std::ceil(eta)), " s");
    }
    if ((options_.eval_every > 0 && (step + 1) % options_.eval_every == 0) || last) {
      const nlohmann::json ev = evaluate();
      metrics << nlohmann::json({{"step", step + 1}, {"eval", ev}}).dump() << "\n" << std::flush;
      log::info("eval at step ", step + 1, ": perplexity ", ev["perplexity"].get<double>(),
                "  kd ", ev["kd"].get<double>(), "  (", ev["positions"].get<int64_t>(),
                " held-out positions)");
      result.last_eval = ev;
      last_eval_ = {{"step", step + 1}, {"eval", ev}};
    }
    if ((options_.save_every > 0 && (step + 1) % options_.save_every == 0) || last)
      save_checkpoint(step + 1);
    result.steps_done = step + 1;
  }
  return result;
}

}  // namespace refinery::distill

// `refine distill --student DIR|--student-config CFG [--teacher MODEL | --teacher-logits C.h5]
//  --data F --out DIR ...`: train a student on a teacher's soft targets and/or the data's labels
// (src/distill/trainer.hpp), with held-out evaluation, a metrics log and resumable checkpoints.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/cli_util.hpp"
#include "cli/commands.hpp"
#include "engine/io/model_directory.hpp"
#include "distill/prefetching_teacher.hpp"
#include "distill/trainer.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/core/log.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/io/logit_cache.hpp"
#include "engine/io/text_source.hpp"
#include "engine/model/model_config.hpp"

namespace refinery::cli {
namespace {

namespace fs = std::filesystem;

struct DistillCliOptions {
  std::string student, student_config, teacher, teacher_logits, out, tokenizer;
  std::string teacher_tail = "bucket";
  std::vector<std::string> data;
  double init_std = 0.0;  // 0: the config's initializer_range, else 0.02
  uint64_t seed = 0;
  int64_t seq_len = 0;  // 0: the cache's, else 512
  int64_t batch = 4, grad_accum = 1, steps = 100, warmup = -1;
  double lr = 3e-4, min_lr_ratio = 0.1, weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95,
         eps = 1e-8, max_grad_norm = 1.0, bias_update_rate = 1e-3;
  std::string loss = "forward_kl";
  double temperature = 1.0, beta = 0.5, alpha = 0.1;
  double kd_weight = -1.0, ce_weight = -1.0;  // -1: 1 and 0 with a teacher, 0 and 1 without
  int64_t eval_every = 0, eval_windows = 16, save_every = 0, log_every = 10;
  double held_out = 0.01;
  std::string device = "cpu", save_dtype = "bf16";
  int threads = 0;
  bool no_recompute = false, resume = false, add_special = false, json = false;
  bool overlap_teacher = false;
};

backend::Divergence parse_divergence(const std::string& name) {
  if (name == "forward_kl") return backend::Divergence::kForwardKl;
  if (name == "reverse_kl") return backend::Divergence::kReverseKl;
  if (name == "jsd") return backend::Divergence::kJsd;
  if (name == "skew_kl") return backend::Divergence::kSkewKl;
  throw_user_error("--loss ", name, ": expected forward_kl, reverse_kl, jsd or skew_kl");
}


void run_distill(const DistillCliOptions& o) {
  if (o.student.empty() == o.student_config.empty())
    throw_user_error("give exactly one of --student DIR (start from a model) and "
                     "--student-config CONFIG.json (random initialization)");
  if (!o.teacher.empty() && !o.teacher_logits.empty())
    throw_user_error("give at most one of --teacher and --teacher-logits");
  const bool has_teacher = !o.teacher.empty() || !o.teacher_logits.empty();
  if (o.teacher_logits.empty() && o.data.empty())
    throw_user_error("--data is required (with --teacher-logits the cache's tokens are used)");
  if (o.batch < 1) throw_user_error("--batch is ", o.batch, "; it must be >= 1");
  if (!std::isfinite(o.lr) || o.lr < 0.0)
    throw_user_error("--lr is ", o.lr,
                     "; the peak learning rate must be a positive number such as 3e-4");
  const backend::Divergence divergence = parse_divergence(o.loss);  // before anything loads
  distill::Trainer::check_output_directory(o.out, o.resume);

  // The student's config.
  const fs::path config_path =
      o.student.empty() ? fs::path(o.student_config) : fs::path(o.student) / "config.json";
  if (!fs::exists(config_path))
    throw_user_error(config_path.string(), " does not exist; --student needs a model directory "
                     "with config.json, --student-config a config.json file");
  const nlohmann::json config_json = io::read_json_file(config_path);
  const model::ModelConfig config = model::parse_model_config(config_json, config_path.string());

  std::shared_ptr<backend::Backend> be = o.device == "cuda" ? backend::make_cuda_backend(0)
                                                            : backend::make_cpu_backend(o.threads);

  // Teacher and data.
  std::unique_ptr<distill::TeacherSource> teacher;
  std::vector<int32_t> tokens;
  int64_t seq_len = o.seq_len > 0 ? o.seq_len : 512;
  if (!o.teacher_logits.empty()) {
    auto cached = std::make_unique<distill::CachedTeacher>(o.teacher_logits, be);
    if (o.seq_len > 0 && o.seq_len != cached->seq_len())
      throw_user_error("--seq-len ", o.seq_len, " differs from the cache's ", cached->seq_len(),
                       "; training windows must be the cache's sequences (omit --seq-len)");
    seq_len = cached->seq_len();
    if (cached->is_priority_sample() &&
        (divergence != backend::Divergence::kForwardKl || o.temperature != 1.0 ||
         o.teacher_tail != "bucket"))
      throw_user_error(o.teacher_logits, " holds a priority sample (`refine logits --sample`): its "
                       "estimates are unbiased for forward KL at temperature 1 only; use "
                       "--loss forward_kl --temperature 1 (and no --teacher-tail), or a top-k "
                       "cache made without --sample");
    tokens = cached->token_stream();
    if (!o.data.empty())
      log::warn("--data is ignored with --teacher-logits: the cache's tokens are the data");
    teacher = std::move(cached);
  } else {
    io::TextSource check(o.data);  // every input exists, before anything loads
    fs::path tok = !o.tokenizer.empty() ? fs::path(o.tokenizer)
                   : !o.student.empty() ? fs::path(o.student)
                   : !o.teacher.empty() ? fs::path(o.teacher)
                                        : fs::path();
    eval::TextEncoder encode = [](std::string_view) -> std::vector<int32_t> {
      throw_user_error("--data holds text but there is no tokenizer: pass --tokenizer "
                       "DIR|tokenizer.json (a student from --student-config has none of its own), "
                       "or tokenize first with `refine data tokenize`");
    };
    if (!tok.empty()) encode = eval::lazy_tokenizer_encoder(tok, o.add_special);
    tokens = eval::read_token_stream(o.data, encode).tokens;
    if (!o.teacher.empty() && o.overlap_teacher) {
      // The teacher on a backend of its own, driven by a worker thread (same results).
      auto teacher_be = o.device == "cuda" ? backend::make_cuda_backend(0)
                                           : backend::make_cpu_backend(o.threads);
      teacher = std::make_unique<distill::PrefetchingTeacher>(o.teacher, std::move(teacher_be));
    } else if (!o.teacher.empty()) {
      teacher = std::make_unique<distill::OnlineTeacher>(o.teacher, be);
    }
  }
  if (seq_len > config.max_position_embeddings && config.max_position_embeddings > 0)
    throw_user_error("--seq-len ", seq_len, " exceeds the student's max_position_embeddings ",
                     config.max_position_embeddings);

  // Checked here, before the teacher's forward reads them: ids past the vocabulary mean the data
  // was encoded with another tokenizer.
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= config.vocab_size)
      throw_user_error("token ", i, " of the data has id ", tokens[i],
                       ", outside the student's vocabulary of ", config.vocab_size,
                       " tokens; the data was tokenized for another model: pass --tokenizer "
                       "with the student's tokenizer (or re-tokenize the data with it)");
  {
    // The DataLoader's own check, worded with this command's options.
    const int64_t n = static_cast<int64_t>(tokens.size()), windows = n / seq_len;
    const int64_t held = std::max<int64_t>(
        1, static_cast<int64_t>(std::floor(o.held_out * static_cast<double>(windows))));
    if (o.held_out >= 0.0 && o.held_out < 1.0 && windows - held < o.batch)
      throw_user_error("the data has ", n, " tokens = ", windows, " windows of --seq-len ", seq_len,
                       "; one batch needs ", held + o.batch, " (", held, " held out + --batch ",
                       o.batch, "), i.e. ", (held + o.batch) * seq_len,
                       " tokens: give more --data or lower --seq-len or --batch");
  }

  distill::DataLoaderOptions data_options;
  data_options.seq_len = seq_len;
  data_options.batch_size = o.batch;
  data_options.seed = o.seed;
  data_options.held_out_fraction = o.held_out;
  const std::string data_fingerprint = io::data_fingerprint(tokens);  // checked by --resume
  // The tail prior of a top-k cache: token counts of the training windows (the whole stream
  // minus the held-out windows, which the student must not see).
  const distill::TeacherTail tail = distill::parse_teacher_tail(o.teacher_tail);
  if (tail != distill::TeacherTail::kBucket && o.teacher_logits.empty())
    throw_user_error("--teacher-tail ", o.teacher_tail,
                     " applies to a top-k cache (--teacher-logits); an online teacher is dense");
  std::vector<int64_t> counts;
  if (tail == distill::TeacherTail::kUnigram) {
    counts.assign(static_cast<std::size_t>(config.vocab_size), 0);
    for (const int32_t id : tokens) ++counts[static_cast<std::size_t>(id)];
  }
  distill::DataLoader data(std::move(tokens), data_options);
  if (tail != distill::TeacherTail::kBucket) {
    for (int64_t w = 0; w < data.held_out_windows() && !counts.empty(); ++w)
      for (const int32_t id : data.held_out_window(w)) --counts[static_cast<std::size_t>(id)];
    if (counts.empty()) counts.assign(static_cast<std::size_t>(config.vocab_size), 0);
    static_cast<distill::CachedTeacher&>(*teacher).set_tail_prior(
        distill::tail_log_prior(tail, counts));
  }

  // The student.
  train::ParameterSet params;
  if (!o.student.empty()) {
    params = train::ParameterSet::load(o.student, config, *be);
  } else {
    const double std_dev = o.init_std > 0.0 ? o.init_std
                                            : config_json.value("initializer_range", 0.02);
    params = train::ParameterSet::random_init(config, std_dev, o.seed, *be);
  }
  train::TrainableModelOptions model_options;
  model_options.recompute = !o.no_recompute;
  train::TrainableModel student(config, std::move(params), be, model_options);

  distill::TrainerOptions t;
  t.steps = o.steps;
  t.grad_accum = o.grad_accum;
  t.schedule.peak_lr = o.lr;
  t.schedule.warmup_steps = o.warmup >= 0 ? o.warmup : std::max<int64_t>(1, o.steps / 100);
  t.schedule.total_steps = o.steps;
  t.schedule.min_lr_ratio = o.min_lr_ratio;
  t.adamw.beta1 = o.beta1;
  t.adamw.beta2 = o.beta2;
  t.adamw.eps = o.eps;
  t.adamw.weight_decay = o.weight_decay;
  t.max_grad_norm = o.max_grad_norm;
  t.bias_update_rate = o.bias_update_rate;
  t.loss.divergence = divergence;
  t.loss.temperature = o.temperature;
  t.loss.beta = o.beta;
  t.loss.alpha = o.alpha;
  t.loss.kd_weight = o.kd_weight >= 0.0 ? o.kd_weight : (has_teacher ? 1.0 : 0.0);
  t.loss.ce_weight = o.ce_weight >= 0.0 ? o.ce_weight : (has_teacher ? 0.0 : 1.0);
  t.teacher_tail = distill::teacher_tail_name(tail);
  t.eval_every = o.eval_every;
  t.eval_windows = o.eval_windows;
  t.save_every = o.save_every;
  t.log_every = o.log_every;
  t.save_dtype = o.save_dtype == "f32" ? DType::kF32 : DType::kBF16;
  t.out = o.out;
  t.resume = o.resume;
  t.seed = o.seed;
  t.data_fingerprint = data_fingerprint;
  t.student_config = config_json;
  const fs::path tok_dir = !o.student.empty() ? fs::path(o.student)
                           : !o.teacher.empty() ? fs::path(o.teacher)
                                                : fs::path(o.tokenizer);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json"})
    if (!tok_dir.empty() && fs::is_directory(tok_dir)) t.tokenizer_files.push_back(tok_dir / f);
  t.provenance = {{"created_by", "refine distill"},
                  {"student", o.student.empty() ? o.student_config : o.student},
                  {"teacher", o.teacher.empty() ? o.teacher_logits : o.teacher},
                  {"data", o.data},
                  {"steps", o.steps},
                  {"seq_len", seq_len},
                  {"batch", o.batch},
                  {"grad_accum", o.grad_accum},
                  {"lr", o.lr},
                  {"loss", o.loss},
                  {"temperature", o.temperature},
                  {"kd_weight", t.loss.kd_weight},
                  {"ce_weight", t.loss.ce_weight},
                  {"teacher_tail", t.teacher_tail},
                  {"seed", o.seed}};

  log::info("distill: student ", config.model_type, " (", student.parameters().total_numel(),
            " parameters) on ", be->name(), "; ", data.train_windows(), " train windows and ",
            data.held_out_windows(), " held-out windows of ", seq_len, " tokens; ",
            t.steps, " steps of ", t.grad_accum, " x ", o.batch, " windows");
  distill::Trainer trainer(student, teacher.get(), data, t);
  const distill::TrainerResult r = trainer.run();
  nlohmann::json summary = {{"out", o.out}, {"steps", r.steps_done}, {"last_loss", r.last_loss},
                            {"eval", r.last_eval}};
  if (o.json) {
    std::cout << summary.dump() << "\n";
  } else {
    std::cout << "student written to " << o.out << " after " << r.steps_done << " steps\n";
    if (!r.last_eval.is_null())
      std::cout << "held-out perplexity " << r.last_eval["perplexity"].get<double>()
                << ", KL to teacher " << r.last_eval["kd"].get<double>() << "\n";
    std::cout << "metrics: " << (fs::path(o.out) / "train" / "metrics.jsonl").string() << "\n";
  }
}

}  // namespace

void register_distill(CLI::App& app) {
  auto o = std::make_shared<DistillCliOptions>();
  auto* cmd = app.add_subcommand("distill", "Train a student from a teacher (KD) and/or labels");
  cmd->footer(
      "Examples:\n"
      "  refine distill --student-config models/configs/student.json --teacher TEACHER \\\n"
      "      --data train.jsonl --out student --steps 1000 --seq-len 512 --batch 8 --lr 1e-3\n"
      "  refine logits TEACHER --data train.jsonl --out t64.h5 --top-k 64 --seq-len 512\n"
      "  refine distill --student-config CFG --teacher-logits t64.h5 --out student --steps 1000\n"
      "Kill it any time: `--resume` with the same options continues from the last checkpoint\n"
      "(--save-every) with the same trajectory.");
  cmd->add_option("--student", o->student, "Start from this model directory");
  cmd->add_option("--student-config", o->student_config, "Random init from this config.json");
  cmd->add_option("--init-std", o->init_std, "Init std (default: the config's initializer_range)");
  cmd->add_option("--teacher", o->teacher, "Online teacher model directory");
  cmd->add_option("--teacher-logits", o->teacher_logits, "Offline top-k cache from `refine logits`");
  cmd->add_option("--teacher-tail", o->teacher_tail,
                  "A top-k cache's tail mass: bucket (one outcome), unigram or uniform (spread "
                  "over the uncached ids by that prior)")
      ->capture_default_str();
  cmd->add_option("--data", o->data, "Training text: .txt, .jsonl, tokens JSON or a token dataset .h5");
  cmd->add_option("--tokenizer", o->tokenizer, "Tokenizer dir or tokenizer.json (default: student/teacher)");
  cmd->add_option("--out", o->out, "Output directory (the student, train/metrics.jsonl, checkpoints)")
      ->required();
  cmd->add_option("--seq-len", o->seq_len, "Tokens per window (default 512, or the cache's)");
  cmd->add_option("--batch", o->batch, "Windows per micro-batch")->capture_default_str();
  cmd->add_option("--grad-accum", o->grad_accum, "Micro-batches per optimizer step")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--lr", o->lr, "Peak learning rate")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Warmup steps (default: 1% of --steps)");
  cmd->add_option("--min-lr-ratio", o->min_lr_ratio, "Cosine floor as a fraction of --lr")->capture_default_str();
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
  cmd->add_option("--beta1", o->beta1, "AdamW beta1")->capture_default_str();
  cmd->add_option("--beta2", o->beta2, "AdamW beta2")->capture_default_str();
  cmd->add_option("--eps", o->eps, "AdamW epsilon")->capture_default_str();
  cmd->add_option("--max-grad-norm", o->max_grad_norm, "Gradient clipping (0: off)")->capture_default_str();
  cmd->add_option("--bias-update-rate", o->bias_update_rate,
                  "MoE students with a score-correction bias: DeepSeek-V3 load balancing step (0: off)")
      ->capture_default_str();
  cmd->add_option("--loss", o->loss, "forward_kl, reverse_kl, jsd or skew_kl")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "KD temperature")->capture_default_str();
  cmd->add_option("--beta", o->beta, "JSD beta")->capture_default_str();
  cmd->add_option("--alpha", o->alpha, "Skew-KL alpha")->capture_default_str();
  cmd->add_option("--kd-weight", o->kd_weight, "Weight of the KD term (default 1 with a teacher)");
  cmd->add_option("--ce-weight", o->ce_weight, "Weight of the label CE (default 0 with a teacher, else 1)");
  cmd->add_option("--eval-every", o->eval_every, "Held-out evaluation every N steps (0: at the end)")
      ->capture_default_str();
  cmd->add_option("--eval-windows", o->eval_windows, "Held-out windows per evaluation")->capture_default_str();
  cmd->add_option("--held-out", o->held_out, "Fraction of windows held out")->capture_default_str();
  cmd->add_option("--save-every", o->save_every, "Checkpoint every N steps (0: at the end)")
      ->capture_default_str();
  cmd->add_option("--log-every", o->log_every, "Steps between progress lines on stderr")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Data order and init seed")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--save-dtype", o->save_dtype, "bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  cmd->add_flag("--no-recompute", o->no_recompute, "Keep every activation (more memory, less compute)");
  cmd->add_flag("--overlap-teacher", o->overlap_teacher,
                "Run the online teacher's forward for the next batch on its own thread (and CUDA "
                "stream) while the student trains on this one; same results, more memory");
  cmd->add_flag("--resume", o->resume, "Continue the run in --out from its last checkpoint");
  cmd->add_flag("--add-special", o->add_special, "Encode text with the tokenizer's special tokens");
  cmd->add_flag("--json", o->json, "Print a JSON summary on stdout");
  cmd->callback([o] { run_distill(*o); });
}

}  // namespace refinery::cli

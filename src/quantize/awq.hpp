#pragma once
// Activation-aware weight quantization (AWQ, Lin et al. 2023) as AutoAWQ implements it
// (awq/quantize/quantizer.py), streamed one decoder layer at a time (DESIGN §4):
//   1. The calibration rows' residual stream enters layer l; one forward of the unmodified layer
//      records every scaling group's input (taps) and gives layer l+1's input (AutoAWQ also feeds
//      the next layer from the full-precision layer).
//   2. Scale search per group (awq_groups.hpp): x_mean = mean |x| per input channel, w_mean =
//      mean over the group's weight rows of |w| / max |w| of its quantization group;
//      for α in {0, 1/n, ..., (n-1)/n}: s = clamp(x_mean^α / (w_mean^(1-α) + 1e-4), min 1e-4),
//      s /= sqrt(max s · min s); every linear of the group becomes Q(W·diag(s))·diag(s)^-1; the
//      loss is the mean squared difference of the inspected module's output against the
//      unmodified one over all calibration rows. Best α wins. Our additions: s = 1 (plain RTN) is
//      a candidate too, so a search never makes a group worse than RTN on its calibration loss;
//      a candidate whose loss is NaN/inf is skipped, and a group with no finite candidate stays
//      unscaled with a warning (the run never aborts).
//   3. All scales are applied at once: W·diag(s) for the group's linears and passengers (routers),
//      1/s folded into the preceding RMSNorm weight or the preceding linear's output rows.
//   4. Clip search for every quantized linear except q/k projections (AutoAWQ skips names with
//      "q_"/"k_"): per output row and quantization group, max |w| shrunk by (1 - i/20) for
//      i < 10, w clamped to ±max, error = mean over 512 sampled input rows (input / s) of the
//      group's partial output; the best shrink is applied.
//   5. Every quantizable linear is group-quantized (group_quant.hpp) and packed (AutoAWQ GEMM).
// Options beyond AutoAWQ (AwqOptions, below; measured in docs/evidence/awq-accuracy.md):
// sequential calibration (step 1 of layer l+1 reads the quantized layer l's output), MLA's o_proj
// as a scaling group folded into kv_b_proj's value rows, block-level loss for single-linear
// groups, an asymmetric clip range, clip search for q/k, and routed-token clip samples for
// experts, and GPTQ rounding in step 5.
// Heavy math runs through the Backend (block forwards, errors); weight edits happen on f32 host
// copies of the current layer only.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model/transformer.hpp"
#include "quantize/gptq.hpp"
#include "quantize/group_quant.hpp"
#include "quantize/quantized_model_writer.hpp"

namespace refinery::quantize {

struct AwqOptions {
  GroupQuantSpec spec;
  int grid = 20;                // α candidates of the scale search
  bool duo_scaling = true;      // s from x_mean and w_mean (AutoAWQ's default), else x_mean only
  bool clip = true;             // the clip search (step 4)
  int clip_grid = 20;           // shrink steps of 1/clip_grid ...
  double max_shrink = 0.5;      // ... up to this fraction
  int64_t clip_rows = 512;      // calibration rows sampled for the clip search
  int64_t chunk_sequences = 8;  // calibration sequences per forward (bounds activation memory)
  // ---- beyond AutoAWQ (each measured in docs/evidence/awq-accuracy.md) ----
  // Layer l+1 is calibrated on the output of the already quantized layer l (scaled norms, clipped
  // and quantized weights), as GPTQ does, instead of the full-precision model's. Costs one extra
  // layer forward per layer.
  bool sequential = false;
  // MLA: o_proj becomes a scaling group whose 1/s folds into kv_b_proj's value rows (the
  // attention output is linear in V); AutoAWQ leaves o_proj unscaled.
  bool mla_o_group = true;
  // Groups whose inspected module is a single linear (q_b, kv_b, o, dense down) are scored by the
  // whole block's output instead (attention block, MLP block): costs one block forward instead
  // of one linear per candidate.
  bool block_loss = false;
  // Clip search: clamp each group to [r·min, r·max] (both ends shrink toward 0; what an
  // asymmetric quantizer's range needs) instead of AutoAWQ's ±r·max|w|. Off by default: it clamps
  // on the host and uploads each linear's weight once per shrink step (10 per linear), which the
  // 7B timing on a GPU has not been measured with; its gain on the teacher is small (KL −4..6%
  // together with mla_o_group, perplexity ratio within noise; docs/evidence/awq-accuracy.md).
  bool asymmetric_clip = false;
  bool clip_qk = false;  // clip search for q/k projections too (AutoAWQ skips them)
  // A routed expert's gate/up clip search samples only the tokens routed to it (what AutoAWQ's
  // hooks see), falling back to all tokens when fewer than clip_min_routed reach it.
  bool routed_clip = false;
  int64_t clip_min_routed = 64;
  // Step 5 rounds with GPTQ (gptq.hpp) instead of round-to-nearest: each quantized linear's
  // scaled, clipped weight W·diag(s) with the Hessian of its input x·diag(s)^-1 over the
  // calibration rows (one H per distinct input: q_a/kv_a share one, an MoE's gate/up share one).
  // A routed expert's gate/up use the rows routed to it when at least `in` (its input size) reach
  // it, else all rows (what the scale search uses); a routed expert's down projection uses all
  // rows (its routed input is not tapped). Same file format. Costs one Cholesky per distinct
  // input (O(in^3)) and O(out·in^2) per linear.
  bool gptq = false;
  GptqOptions gptq_options;
};

struct AwqGroupReport {
  std::string name;
  double ratio = -1.0;      // the chosen α; -1: no scaling (RTN was best, or nothing finite)
  double loss_rtn = 0.0;    // calibration loss with s = 1
  double loss_best = 0.0;   // with the chosen scales
  int non_finite = 0;       // candidates skipped for a NaN/inf loss
  std::string note;         // e.g. why the group was not searched
};

struct AwqResult {
  QuantizedModelParts parts;
  std::vector<AwqGroupReport> groups;
  int64_t dense_bytes = 0, packed_bytes = 0;
  nlohmann::json report() const;  // for refinery.json
};

// Quantizes `model` (dense bf16/f16/f32 weights; its weights are modified during the run and
// restored per layer) with calibration `tokens`: `sequences` windows of equal length side by
// side. Progress per layer on stderr.
AwqResult quantize_awq(model::Transformer& model, std::span<const int32_t> tokens,
                       int64_t sequences, const AwqOptions& options);

}  // namespace refinery::quantize

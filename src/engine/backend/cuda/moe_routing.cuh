#pragma once
// MoE routing on the device: the T x k (token, expert) pairs of a layer sorted into
// expert-contiguous order without the host (no download, no synchronization), for the grouped
// GEMM path of moe.cu. Same order as the host path: experts ascending, tokens ascending inside an
// expert; each token's pair positions ascending (= expert order), so the un-permute sums a
// token's pairs in expert order, as the CPU does.
#include <cuda_runtime.h>

#include <cstdint>

namespace refinery::backend::cuda {

// Device int32 buffers written by route_pairs_on_device (n = t_count · k pairs).
struct DeviceRouting {
  int32_t* perm_token;     // [n]   token of the pair at sorted position p
  float* perm_scale;       // [n]   its routing weight
  int32_t* pos;            // [n]   sorted position of pair (t, j) at t·k + j, ascending per token
  int32_t* token_offsets;  // [t_count + 1]  t·k (CSR offsets of the un-permute)
  int32_t* targets;        // [t_count]      t
  int32_t* group_offsets;  // [e_count + 1]  first sorted position of each expert; [e_count] = n
  int32_t* counts;         // [e_count]      scratch: pairs per expert
};

// Number of int32 words route_pairs_on_device needs for DeviceRouting's buffers.
int64_t device_routing_words(int64_t t_count, int64_t k, int64_t e_count);

// Carves the buffers out of `words` (device, device_routing_words(...) int32s) and enqueues the
// kernels on `stream`. chosen: device int32 [t_count, k] expert ids in [0, e_count) (the router's
// output; a pair with an id outside the range is given to expert 0 with weight 0); weights: device f32 [t_count, k].
DeviceRouting route_pairs_on_device(const int32_t* chosen, const float* weights, int64_t t_count,
                                    int64_t k, int64_t e_count, int32_t* words,
                                    cudaStream_t stream);

}  // namespace refinery::backend::cuda

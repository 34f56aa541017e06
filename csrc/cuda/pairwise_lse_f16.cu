// Kernels of the pairwise LSE core for __half inputs (one dtype per translation unit so the
// build compiles them in parallel; see pairwise_lse_launch.cuh).
#include "pairwise_lse_launch.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

FLASHNCE_INSTANTIATE_PAIRWISE_LSE(__half)

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce

// Kernels of the tile core for bfloat16 inputs (one dtype per translation unit so the build
// compiles them in parallel; see tile_launch.cuh).
#include "tile_launch.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

FLASHNCE_INSTANTIATE_TILE(__nv_bfloat16)

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce

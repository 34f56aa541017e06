// Kernels of the tile core for float inputs (one dtype per translation unit so the build
// compiles them in parallel; see tile_launch.cuh).
#include "tile_launch.cuh"

namespace flashnce {
namespace cuda {
namespace detail {

FLASHNCE_INSTANTIATE_TILE(float)

}  // namespace detail
}  // namespace cuda
}  // namespace flashnce

// Out-of-line pieces of common.h.
#include "common.h"

namespace fastrnn {
namespace cpu {

FR_CPU_CLONES void convert_row_bf16(c10::BFloat16* __restrict dst, const float* __restrict src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<c10::BFloat16>(src[j]);
}

}  // namespace cpu
}  // namespace fastrnn

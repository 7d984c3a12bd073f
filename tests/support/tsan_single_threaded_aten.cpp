// ThreadSanitizer cannot see the barriers of libgomp, ATen's OpenMP runtime (it is not
// instrumented), so every ATen parallel region, libtorch's own included, reports races between
// its workers and the thread that waits for them. Under TSan every test binary therefore runs
// ATen on one thread (at::parallel_for then runs inline); tests that start their own
// std::threads still run, and those threads TSan does see.

#include <ATen/Parallel.h>

#if defined(__SANITIZE_THREAD__)
namespace {
const bool kAtenSingleThreaded = [] {
  at::set_num_threads(1);
  return true;
}();
}  // namespace
#endif

// The conformance suite asks resources for impossible amounts (a pebibyte) and expects
// OutOfMemory. Under the sanitizers an impossible malloc aborts the process unless the allocator
// may return null, as glibc's does; these hooks give the test binary that default (ASAN_OPTIONS
// and TSAN_OPTIONS from the environment still apply on top).

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
extern "C" {
#if defined(__SANITIZE_ADDRESS__)
const char* __asan_default_options() {
  return "allocator_may_return_null=1";
}
#endif
#if defined(__SANITIZE_THREAD__)
const char* __tsan_default_options() {
  return "allocator_may_return_null=1";
}
#endif
}
#endif

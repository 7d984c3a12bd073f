// Catch2's main, compiled once for every test binary. Tests tagged [gpu] need a CUDA device:
// where there is none, a run that selects only [gpu] tests prints why and exits with
// kSkipReturnCode, which ctest (tests/CMakeLists.txt) reports as skipped, so that a run shows
// what did not run instead of leaving it out.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "apo/memory/cuda_resources.hpp"

namespace {

constexpr int kSkipReturnCode = 77;

bool is_gpu_test(const Catch::TestCase& test) {
  const auto& tags = test.getTestCaseInfo().lcaseTags;
  return std::find(tags.begin(), tags.end(), "gpu") != tags.end();
}

}  // namespace

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int status = session.applyCommandLine(argc, argv); status != 0) return status;
  const Catch::Config& config = session.config();
  const bool listing = config.listTests() || config.listTestNamesOnly() || config.listTags() ||
                       config.listReporters();
  if (!listing && config.hasTestFilters() && !apo::memory::cuda_device_available()) {
    const std::vector<Catch::TestCase> selected =
        Catch::filterTests(Catch::getAllTestCasesSorted(config), config.testSpec(), config);
    if (!selected.empty() && std::all_of(selected.begin(), selected.end(), is_gpu_test)) {
      std::cout << "skipped: " << selected.size()
                << " [gpu] test(s) need a CUDA device and apo built with CUDA; there is none "
                   "here\n";
      return kSkipReturnCode;
    }
  }
  return session.run();
}

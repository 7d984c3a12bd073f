// Loads the configuration file named on the command line with the installed apo and prints the
// effective batch size, to show the package's headers and library work from outside the tree.
#include <cstdio>

#include <apo/core/config.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: apo_consumer CONFIG\n");
    return 2;
  }
  try {
    const apo::Config config = apo::load_config(argv[1]);
    std::printf("batch_size=%d\n", config.performance.batch_size);
    return 0;
  } catch (const apo::Error& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
}

// Load a configuration the way an application does: a preset for the card, the user's file,
// and an override from the command line; report every problem at once if there are any.
//
//   example_load_config my_config.json
#include <cstdio>

#include <apo/core/config.hpp>
#include <apo/core/machine.hpp>
#include <apo/tune/presets.hpp>

int main(int argc, char** argv) {
  const apo::MachineInfo machine = apo::probe_machine();
  apo::ConfigLoader loader = apo::tune::config_loader();
  loader.preset("rtx4060ti");
  for (int i = 1; i < argc; ++i) loader.file(argv[i]);
  loader.set("storage_optimization.temp_path=/tmp/apo");
  loader.check_against(machine);
  try {
    const apo::LoadedConfig loaded = loader.load();
    std::printf("%s\n", apo::to_json(loaded.config).c_str());
    if (const apo::SourceLocation* where = loaded.origin("performance_optimization.batch_size")) {
      std::printf("batch_size was set by %s\n", where->to_string().c_str());
    }
    return 0;
  } catch (const apo::ConfigError& error) {
    for (const auto& problem : error.problems()) {
      std::fprintf(stderr, "%s\n", problem.to_string().c_str());
    }
    return 1;
  }
}

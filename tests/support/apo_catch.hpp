#pragma once

// Catch2 for apo's tests: include this instead of <catch2/catch.hpp>. libtorch's logging header
// defines a CHECK macro of its own (a fatal check); it is included first and its CHECK dropped,
// so every test's CHECK is Catch's, whatever torch headers come after (the header is included
// only once).
#include <c10/util/Logging.h>
#undef CHECK
#include <catch2/catch.hpp>

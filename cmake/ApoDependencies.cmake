# Finds what apo builds against. libtorch comes from the installed PyTorch, so the Python that owns
# it is found first; everything else is a CMake package (Debian's, or extracted ones on
# CMAKE_PREFIX_PATH, as benchmarks/gpu/prepare_deps.sh makes for the GPU machine).

if(APO_BUILD_PYTHON)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)
else()
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
endif()

if(NOT Torch_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import torch; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE apo_torch_prefix
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE apo_torch_status
    ERROR_QUIET)
  if(NOT apo_torch_status EQUAL 0)
    message(FATAL_ERROR
      "apo needs PyTorch: '${Python_EXECUTABLE} -c \"import torch\"' failed. "
      "Install it (pip install torch==2.13.0 on the CPU) or set Python_EXECUTABLE.")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${apo_torch_prefix}")
endif()

# TorchConfig looks for CUDA itself when PyTorch was built with it, through FindCUDA, which takes
# the toolkit's root from where nvcc is on PATH: a wrapper script there (/usr/local/bin/nvcc)
# misleads it. CUDAToolkit follows the CUDA compiler to the real root.
if(CMAKE_CUDA_COMPILER AND NOT DEFINED CUDA_TOOLKIT_ROOT_DIR)
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(CUDA_TOOLKIT_ROOT_DIR "${CUDAToolkit_TARGET_DIR}" CACHE PATH
      "The CUDA toolkit's root, for PyTorch's CMake package")
  endif()
endif()
find_package(Torch REQUIRED)
get_filename_component(APO_TORCH_LIBRARY_DIR "${TORCH_LIBRARY}" DIRECTORY)

# Header-only fmt: no shared library to carry to machines that lack the package.
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(CLI11 2.1 REQUIRED)
# OpenMP, so that at::parallel_for in apo's own kernels runs in parallel (src/CMakeLists.txt).
find_package(OpenMP COMPONENTS CXX)
# Model file compression: zstd (apo's codec) and xz (the guide's lzma, for comparison).
find_package(zstd 1.4 CONFIG REQUIRED)
find_package(LibLZMA 5.2 REQUIRED)
# The reference workflows write PNG images (with alpha) and animated GIF clips.
find_package(PNG 1.6 REQUIRED)
find_package(GIF 5 REQUIRED)

if(APO_BUILD_PYTHON)
  set(PYBIND11_FINDPYTHON ON)
  find_package(pybind11 2.10 CONFIG REQUIRED)
endif()

if(APO_BUILD_TESTS)
  find_package(Catch2 2.13 REQUIRED)
  include(Catch)
endif()

# cmake -P script: build the fuzz target with clang, then fuzz the header parser for SECONDS
# seconds starting from the seed corpus (copied, so the fuzzer's finds stay out of the tree).
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "failed (${status}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()
string(REPLACE ";" "\\;" prefix_path "${PREFIX_PATH}")
run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    "-DCMAKE_CXX_COMPILER=${CLANG}" "-DCMAKE_PREFIX_PATH=${prefix_path}")
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
file(COPY "${CORPUS_DIR}/" DESTINATION "${WORK_DIR}/corpus")
run("${WORK_DIR}/build/fuzz_safetensors_header" "${WORK_DIR}/corpus"
    -max_total_time=${SECONDS} -max_len=4096 -print_final_stats=1
    "-artifact_prefix=${WORK_DIR}/")
message(STATUS "fuzzed the safetensors header parser for ${SECONDS} s without a finding")

# cmake -P script: install the apo build into WORK_DIR/prefix, build tests/consumer against it
# with find_package(apo), run it on CONFIG_FILE and check what it prints.
file(REMOVE_RECURSE "${WORK_DIR}")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "failed (${status}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

run("${CMAKE_COMMAND}" --install "${APO_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
string(REPLACE ";" "\\;" prefix_path "${WORK_DIR}/prefix;${PREFIX_PATH}")
run("${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${prefix_path}" "-DTorch_DIR=${Torch_DIR}" -DCMAKE_BUILD_TYPE=Release)
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/apo_consumer" "${CONFIG_FILE}")
if(NOT last_output MATCHES "batch_size=2")
  message(FATAL_ERROR "unexpected output from apo_consumer: ${last_output}")
endif()
message(STATUS "consumer built against the installed apo and printed: ${last_output}")

# cmake -DBUILD_DIR=<dir> -DTARGET=<target> -DEXPECT=fail|pass [-DPATTERNS=<regex;...>] -P check_build.cmake
# Builds one target of the build tree and checks the outcome: EXPECT=fail requires the
# build to fail with output matching every regex in PATTERNS; EXPECT=pass requires success.
foreach(var BUILD_DIR TARGET EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_build.cmake: ${var} is not set")
  endif()
endforeach()
set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()
execute_process(
  COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET} ${config_args}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)

if(EXPECT STREQUAL "pass")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${TARGET} was expected to compile but failed:\n${output}")
  endif()
  message(STATUS "${TARGET} compiled, as expected")
  return()
endif()

if(result EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must be rejected")
endif()
foreach(pattern IN LISTS PATTERNS)
  if(NOT output MATCHES "${pattern}")
    message(FATAL_ERROR "${TARGET} failed to compile, but the output does not match '${pattern}':\n${output}")
  endif()
endforeach()
message(STATUS "${TARGET} was rejected with the expected message")

# Drives one consumer test (cmake -P):
#   cmake -DAGE_PKG_SETTINGS=<settings.cmake> -DAGE_PKG_MODE=find_package|add_subdirectory -P run_consumer.cmake
# find_package:     configure age's source with tests/examples/benchmarks off, install it
#                   into a fresh prefix, then build and run find_package_consumer against it.
# add_subdirectory: build and run subdirectory_consumer, which add_subdirectory()s age.
# Every run starts from an empty work directory; it is removed again when the test passes.
cmake_minimum_required(VERSION 3.20)

if(NOT AGE_PKG_SETTINGS OR NOT EXISTS "${AGE_PKG_SETTINGS}")
  message(FATAL_ERROR "AGE_PKG_SETTINGS: expected the generated settings file, got '${AGE_PKG_SETTINGS}'")
endif()
include("${AGE_PKG_SETTINGS}")
if(NOT AGE_PKG_MODE MATCHES "^(find_package|add_subdirectory)$")
  message(FATAL_ERROR "AGE_PKG_MODE: expected find_package or add_subdirectory, got '${AGE_PKG_MODE}'")
endif()

# A make jobserver inherited from an outer `make test` would confuse the nested builds.
unset(ENV{MAKEFLAGS})
unset(ENV{MFLAGS})
unset(ENV{MAKELEVEL})

set(work "${AGE_PKG_WORK_ROOT}/${AGE_PKG_MODE}")
file(REMOVE_RECURSE "${work}")
file(MAKE_DIRECTORY "${work}")

# The consumers are tiny: Debug keeps Eigen's asserts on. With GCC/Clang it compiles at -O1
# without -g, which builds an Eigen translation unit faster than -O0 -g does.
set(build_type Debug)
set(configure_args -G "${AGE_PKG_CMAKE_GENERATOR}" "-DCMAKE_BUILD_TYPE=${build_type}"
    "-DCMAKE_CXX_COMPILER=${AGE_PKG_CMAKE_CXX_COMPILER}")
if(AGE_PKG_CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  list(APPEND configure_args "-DCMAKE_CXX_FLAGS_DEBUG=-O1")
endif()
foreach(pair "-A;CMAKE_GENERATOR_PLATFORM" "-T;CMAKE_GENERATOR_TOOLSET")
  list(GET pair 0 flag)
  list(GET pair 1 var)
  if(AGE_PKG_${var})
    list(APPEND configure_args ${flag} "${AGE_PKG_${var}}")
  endif()
endforeach()
foreach(var CMAKE_MAKE_PROGRAM CMAKE_CXX_COMPILER_LAUNCHER CMAKE_CXX_FLAGS Eigen3_DIR nlohmann_json_DIR)
  if(AGE_PKG_${var})
    list(APPEND configure_args "-D${var}=${AGE_PKG_${var}}")
  endif()
endforeach()
if(AGE_PKG_AGE_WARNINGS_AS_ERRORS)
  set(werror ON)
else()
  set(werror OFF)
endif()

# Runs one step; on failure prints its output and stops with the step's name.
function(step name)
  string(TIMESTAMP start "%s" UTC)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  string(TIMESTAMP stop "%s" UTC)
  math(EXPR seconds "${stop} - ${start}")
  message(STATUS "[${AGE_PKG_MODE}] ${name} (${seconds} s)")
  if(NOT rc EQUAL 0)
    message("${out}")
    message(FATAL_ERROR "[${AGE_PKG_MODE}] ${name} failed (${rc}); work directory kept: ${work}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(consumer_build "${work}/consumer-build")
if(AGE_PKG_MODE STREQUAL "find_package")
  set(prefix "${work}/prefix")
  step("configure age (library only)"
    "${AGE_PKG_CMAKE_COMMAND}" -S "${AGE_PKG_SOURCE_DIR}" -B "${work}/age-build" ${configure_args}
    "-DCMAKE_PREFIX_PATH=${AGE_PKG_CMAKE_PREFIX_PATH}" "-DCMAKE_INSTALL_PREFIX=${prefix}"
    -DAGE_BUILD_TESTS=OFF -DAGE_BUILD_EXAMPLES=OFF -DAGE_BUILD_BENCHMARKS=OFF)
  step("build age" "${AGE_PKG_CMAKE_COMMAND}" --build "${work}/age-build" --config ${build_type})
  step("install age into ${prefix}"
    "${AGE_PKG_CMAKE_COMMAND}" --install "${work}/age-build" --config ${build_type})
  foreach(file include/age/core/types.hpp include/age/model/tower.hpp share/cmake/age/ageConfig.cmake
          share/cmake/age/ageConfigVersion.cmake share/cmake/age/ageTargets.cmake)
    if(NOT EXISTS "${prefix}/${file}")
      message(FATAL_ERROR "[find_package] the install prefix lacks ${file}")
    endif()
  endforeach()
  set(prefix_path "${prefix}" ${AGE_PKG_CMAKE_PREFIX_PATH})
  step("configure find_package_consumer"
    "${AGE_PKG_CMAKE_COMMAND}" -S "${AGE_PKG_CONSUMERS}/find_package_consumer" -B "${consumer_build}"
    ${configure_args} "-DCMAKE_PREFIX_PATH=${prefix_path}" "-DAGE_EXPECTED_PREFIX=${prefix}"
    "-DCONSUMER_WARNINGS_AS_ERRORS=${werror}" "-DCONSUMER_EXPECT_IO=${AGE_PKG_HAVE_IO}"
    "-DCONSUMER_EXPECT_SIM=${AGE_PKG_HAVE_SIM}" "-DCONSUMER_EXPECT_TORCH=${AGE_PKG_HAVE_TORCH}")
else()
  step("configure subdirectory_consumer"
    "${AGE_PKG_CMAKE_COMMAND}" -S "${AGE_PKG_CONSUMERS}/subdirectory_consumer" -B "${consumer_build}"
    ${configure_args} "-DCMAKE_PREFIX_PATH=${AGE_PKG_CMAKE_PREFIX_PATH}"
    "-DAGE_SOURCE_DIR=${AGE_PKG_SOURCE_DIR}" "-DCONSUMER_WARNINGS_AS_ERRORS=${werror}")
endif()

step("build consumer"
  "${AGE_PKG_CMAKE_COMMAND}" --build "${consumer_build}" --config ${build_type} --target consumer consumer_compiled)
# Warnings fail the build only with -Werror; report them either way.
if(step_output MATCHES "warning:")
  message("${step_output}")
  message(WARNING "[${AGE_PKG_MODE}] the consumer compiled with warnings")
endif()
step("run consumer"
  "${AGE_PKG_CMAKE_COMMAND}" --build "${consumer_build}" --config ${build_type} --target run_consumer)
string(REGEX MATCHALL "consumer: [^\n]*" lines "${step_output}")
list(JOIN lines "\n" lines)
message("${lines}")
string(REGEX MATCHALL "age consumer OK" passes "${step_output}")
list(LENGTH passes passes)
if(NOT passes EQUAL 2)
  message("${step_output}")
  message(FATAL_ERROR "[${AGE_PKG_MODE}] the consumers ran but did not both report 'age consumer OK' (header-only and age::compiled)")
endif()

# The torch component of the installed package (built only where age found libtorch).
if(AGE_PKG_MODE STREQUAL "find_package" AND AGE_PKG_HAVE_TORCH)
  step("build and run consumer_torch"
    "${AGE_PKG_CMAKE_COMMAND}" --build "${consumer_build}" --config ${build_type} --target run_consumer_torch)
  if(NOT step_output MATCHES "age torch consumer OK")
    message("${step_output}")
    message(FATAL_ERROR "[find_package] consumer_torch ran but did not report 'age torch consumer OK'")
  endif()
  message("consumer: age::torch from the installed package scored a TorchScript module")
endif()

file(REMOVE_RECURSE "${work}")
message(STATUS "[${AGE_PKG_MODE}] passed")

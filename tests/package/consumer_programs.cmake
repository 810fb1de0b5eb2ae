# The consumer program of both consumer projects, built twice: header-only (consumer) and
# with the tower's passes from the separately compiled library age::compiled
# (consumer_compiled, AGE_SEPARATE_COMPILATION); run_consumer runs both. No
# CMAKE_CXX_STANDARD: age::age must carry C++20 to its consumers. Each program is passed
# to the optional `configure_program` command of the including project first.
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE age::age)
add_executable(consumer_compiled main.cpp)
target_link_libraries(consumer_compiled PRIVATE age::compiled)
foreach(program consumer consumer_compiled)
  if(COMMAND configure_program)
    configure_program(${program})
  endif()
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${program} PRIVATE -Wall -Wextra -Wpedantic)
    if(CONSUMER_WARNINGS_AS_ERRORS)
      target_compile_options(${program} PRIVATE -Werror)
    endif()
  endif()
endforeach()

add_custom_target(run_consumer COMMAND consumer COMMAND consumer_compiled VERBATIM)

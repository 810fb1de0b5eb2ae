# Checks that README.md's marked code block is examples/readme_example.cpp, byte for byte,
# so that the example a user reads is the program the suite builds and runs
# (example.readme_example).
#   cmake -DREADME=README.md -DEXAMPLE=examples/readme_example.cpp -DOUT=dir -P readme_example.cmake
# The block is the first ```cpp block after the line "<!-- examples/readme_example.cpp -->".
# On a difference the block is written to OUT/readme_block.cpp and `diff -u` is shown.
foreach(var README EXAMPLE OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "readme_example.cmake: -D${var}=... is required")
  endif()
endforeach()

set(marker "<!-- examples/readme_example.cpp -->")
set(fence_open "```cpp\n")
set(fence_close "\n```")

file(READ "${README}" readme)
file(READ "${EXAMPLE}" example)

string(FIND "${readme}" "${marker}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${README}: no line '${marker}' before the example's code block")
endif()
string(SUBSTRING "${readme}" ${at} -1 rest)
string(FIND "${rest}" "${fence_open}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${README}: no ```cpp block after '${marker}'")
endif()
string(LENGTH "${fence_open}" skip)
math(EXPR at "${at} + ${skip}")
string(SUBSTRING "${rest}" ${at} -1 rest)
string(FIND "${rest}" "${fence_close}" end)
if(end EQUAL -1)
  message(FATAL_ERROR "${README}: the ```cpp block after '${marker}' is not closed")
endif()
math(EXPR end "${end} + 1")  # the block's last line keeps its newline
string(SUBSTRING "${rest}" 0 ${end} block)

if(block STREQUAL example)
  message(STATUS "README.md's example block is ${EXAMPLE}")
  return()
endif()

file(MAKE_DIRECTORY "${OUT}")
set(copy "${OUT}/readme_block.cpp")
file(WRITE "${copy}" "${block}")
find_program(DIFF diff)
if(DIFF)
  execute_process(COMMAND ${DIFF} -u "${EXAMPLE}" "${copy}")
endif()
message(FATAL_ERROR "README.md's example block (written to ${copy}) differs from ${EXAMPLE}: "
                    "change both together")

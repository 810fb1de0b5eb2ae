// The one translation unit of a program built with AGE_SEPARATE_COMPILATION
// (age/core/config.hpp): include this header in exactly one .cpp file of the program, with
// AGE_SEPARATE_COMPILATION defined there as everywhere else. The CMake target
// age::compiled is that file, built once.
#pragma once

#if !defined(AGE_SEPARATE_COMPILATION)
#error "age/impl/src.hpp is for AGE_SEPARATE_COMPILATION builds: define it in every translation unit"
#endif

#include "age/model/impl/tower.ipp"

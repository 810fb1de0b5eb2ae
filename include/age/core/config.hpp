// Build configuration: header-only (the default) or separate compilation.
//
// Header-only, every translation unit that scores compiles the tower's passes it uses
// (the product kernel, the request passes, the sign table): a few seconds of every such
// file's build. With AGE_SEPARATE_COMPILATION defined in EVERY translation unit of a
// program, the headers declare those passes only, and one translation unit compiles them
// all: the library age::compiled of the CMake package (target age_compiled), or a file of
// yours that includes age/impl/src.hpp. The passes are then compiled with that library's
// flags (-march and AGE_SIMD_PORTABLE alike), not with each caller's.
#pragma once

#if defined(AGE_SEPARATE_COMPILATION)
#define AGE_DECL
#else
#define AGE_DECL inline
#endif

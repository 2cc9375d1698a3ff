# Warnings and sanitizers as INTERFACE targets (ccache style): link them into
# each of dtest's own targets, never into third-party code.
add_library(dtest_warnings INTERFACE)
target_compile_options(dtest_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align
  -Wunused -Woverloaded-virtual -Wformat=2
  -Wimplicit-fallthrough)
if(DTEST_WERROR)
  target_compile_options(dtest_warnings INTERFACE -Werror)
endif()
# Debug builds check container bounds in libstdc++.
target_compile_definitions(dtest_warnings INTERFACE
  $<$<CONFIG:Debug>:_GLIBCXX_ASSERTIONS>)

add_library(dtest_sanitize INTERFACE)
if(DTEST_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-omit-frame-pointer
           -fno-sanitize-recover=undefined)
  target_compile_options(dtest_sanitize INTERFACE ${_san})
  target_link_options(dtest_sanitize INTERFACE ${_san})
  # ASan cannot link a fully static executable.
  set(DTEST_STATIC_AGENT OFF CACHE BOOL "" FORCE)
endif()

add_library(dtest_hygiene INTERFACE)
target_link_libraries(dtest_hygiene INTERFACE dtest_warnings dtest_sanitize)

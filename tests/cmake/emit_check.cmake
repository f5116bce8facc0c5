# Compiles a file (-O2, to an object file) and fails if the object defines a symbol matching
# FORBID: code that every such file would compile again. Either a file that includes HEADER
# and uses nothing of it (an out-of-class virtual function is a class's key function, and drags
# its vtable and what that calls into every file that includes the class), or SOURCE, with
# DEFINES (a file using a pool through the compiled part must not compile the machinery).
# Usage: cmake -DCOMPILER=<c++> -DNM=<nm> -DINCLUDE=<include dir> -DFORBID=<regex>
#              (-DHEADER=<header> | -DSOURCE=<file>) [-DDEFINES=<macro;...>] -P emit_check.cmake
if(SOURCE)
  get_filename_component(id ${SOURCE} NAME_WE)
  set(source ${SOURCE})
  set(what ${SOURCE})
else()
  string(MAKE_C_IDENTIFIER "${HEADER}" id)
  set(source ${CMAKE_CURRENT_BINARY_DIR}/emit_check_${id}.cpp)  # one per check: they run at once
  file(WRITE ${source} "#include <${HEADER}>\nint main() { return 0; }\n")
  set(what "a file that only includes ${HEADER}")
endif()
set(object ${CMAKE_CURRENT_BINARY_DIR}/emit_check_${id}.o)
list(TRANSFORM DEFINES PREPEND -D OUTPUT_VARIABLE defines)
execute_process(
  COMMAND ${COMPILER} -std=c++20 -O2 ${defines} -I${INCLUDE} -c ${source} -o ${object}
  ERROR_VARIABLE errors RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "${what} does not compile:\n${errors}")
endif()
execute_process(
  COMMAND ${NM} -C --defined-only ${object}
  OUTPUT_VARIABLE symbols ERROR_VARIABLE errors RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "${NM} failed on ${object}:\n${errors}")
endif()
string(REGEX MATCHALL "[^\n]*(${FORBID})[^\n]*" found "${symbols}")
if(found)
  list(LENGTH found count)
  list(JOIN found "\n" found)
  message(FATAL_ERROR "${what} (${defines}) defines ${count} symbols it should not:\n${found}")
endif()
string(REGEX MATCHALL "\n" lines "${symbols}")
list(LENGTH lines count)
message(STATUS "${what}: clean (${count} symbols defined)")

# Compiles a file that includes HEADER and uses nothing of it (-O2, to an object file), and fails
# if the object defines a symbol matching FORBID: code every file that includes the header would
# compile again, pool or no pool (an out-of-class virtual function is a class's key function,
# and drags its vtable and what that calls into every such file).
# Usage: cmake -DCOMPILER=<c++> -DNM=<nm> -DINCLUDE=<include dir> -DHEADER=<header>
#              -DFORBID=<regex> -P emit_check.cmake
string(MAKE_C_IDENTIFIER "${HEADER}" id)
set(source ${CMAKE_CURRENT_BINARY_DIR}/emit_check_${id}.cpp)  # one per header: tests run at once
set(object ${CMAKE_CURRENT_BINARY_DIR}/emit_check_${id}.o)
file(WRITE ${source} "#include <${HEADER}>\nint main() { return 0; }\n")
execute_process(
  COMMAND ${COMPILER} -std=c++20 -O2 -I${INCLUDE} -c ${source} -o ${object}
  ERROR_VARIABLE errors RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "a file including ${HEADER} does not compile:\n${errors}")
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
  message(FATAL_ERROR "a file that only includes ${HEADER} defines ${count} symbols it does "
                      "not use:\n${found}")
endif()
string(REGEX MATCHALL "\n" lines "${symbols}")
list(LENGTH lines count)
message(STATUS "${HEADER}: clean (${count} symbols defined)")

# Preprocesses one header on its own and fails if any file it opens matches FORBID, a regular
# expression for what its layer must not know (cereal, the rings, MPI...).
# Usage: cmake -DCOMPILER=<c++> -DINCLUDE=<include dir> -DHEADER=<header> -DFORBID=<regex>
#              [-DDEFINES=<macro;...>] -P include_check.cmake
string(MAKE_C_IDENTIFIER "${HEADER}${DEFINES}" id)
list(TRANSFORM DEFINES PREPEND -D OUTPUT_VARIABLE defines)
set(source ${CMAKE_CURRENT_BINARY_DIR}/include_check_${id}.cpp)  # one per header: tests run at once
file(WRITE ${source} "#include <${HEADER}>\n")
execute_process(
  COMMAND ${COMPILER} -std=c++20 -E ${defines} -I${INCLUDE} ${source}
  OUTPUT_VARIABLE preprocessed ERROR_VARIABLE errors RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "${HEADER} does not compile on its own:\n${errors}")
endif()
string(REGEX MATCHALL "# [0-9]+ \"[^\"]*\"" lines "${preprocessed}")
foreach(line IN LISTS lines)
  if(line MATCHES "${FORBID}")
    message(FATAL_ERROR "${HEADER} (${defines}) must not include ${line}")
  endif()
endforeach()
list(LENGTH lines count)
message(STATUS "${HEADER}: clean (${count} line markers)")

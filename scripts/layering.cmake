# layering.cmake - the layering test (ctest -R layering), run as
#   cmake -DNM=nm -DCORE=libcore.a [-DBELOW=core/] [-DLIB=a.o|b.o] [-DPROCS=...] [-DBROKER=...]
#         [-DOBSERVE=...] [-DAPI=...] [-DCLI=...] -P layering.cmake
# CORE is a static library of the lower layers (core/ and lib/, or core/
# alone, which BELOW names in messages); the others are the object files of
# the layers above them ('|'-separated). Fails, naming them, if the library
# has an undefined reference to a symbol one of those defines: a call up
# into a layer it must reach only through the seam (core/place.h), through
# a hook, or not at all.
foreach(v NM CORE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "layering.cmake: -D${v}=... is missing")
  endif()
endforeach()
if(NOT DEFINED BELOW)
  set(BELOW "core/ and lib/")
endif()

# The symbols of `nm ARGS FILES` whose type letter matches `types`.
function(symbols out types)
  execute_process(COMMAND ${NM} ${ARGN} OUTPUT_VARIABLE text RESULT_VARIABLE rc
                  ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "layering.cmake: ${NM} ${ARGN} failed: ${err}")
  endif()
  string(REGEX MATCHALL "[ \t](${types})[ \t]+[^ \t\r\n]+" found "${text}")
  set(names)
  foreach(line ${found})
    string(REGEX REPLACE "^[ \t][A-Za-z][ \t]+" "" name "${line}")
    list(APPEND names ${name})
  endforeach()
  list(REMOVE_DUPLICATES names)
  set(${out} ${names} PARENT_SCOPE)
endfunction()

symbols(undefined "U" -u ${CORE})
set(bad 0)
foreach(layer LIB PROCS BROKER OBSERVE API CLI)
  string(REPLACE "|" ";" objects "${${layer}}")
  if(NOT objects)
    continue()
  endif()
  # Defined, external: text, data, bss, read-only, common, weak.
  symbols(defined "[TDBRCVW]" -g --defined-only ${objects})
  set(hits)
  foreach(name ${undefined})
    list(FIND defined ${name} at)
    if(at GREATER -1)
      list(APPEND hits ${name})
    endif()
  endforeach()
  if(hits)
    list(SORT hits)
    list(LENGTH hits n)
    string(TOLOWER ${layer} dir)
    string(REPLACE ";" "\n  " shown "${hits}")
    message("${BELOW} call(s) up into ${dir}/: ${n} symbol(s)\n  ${shown}")
    set(bad 1)
  endif()
endforeach()
if(bad)
  message(FATAL_ERROR "layering: ${BELOW} reach(es) above itself (see above)")
endif()
message("layering: ${BELOW} reach(es) no layer above")

// A Python extension module with no functions: importing it runs the static initialisers that
// register the ops with the dispatcher. No pybind11, so the library can use the limited API.
#pragma once

#ifdef FLASHNCE_NO_PYTHON
#define FLASHNCE_PYTHON_MODULE(name)
#else
#include <Python.h>

#define FLASHNCE_PYTHON_MODULE(name)                                                 \
  extern "C" PyMODINIT_FUNC PyInit_##name(void) {                                    \
    static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, #name, nullptr, -1, \
                                            nullptr};                                \
    return PyModule_Create(&module_def);                                             \
  }
#endif

// A Python extension module with no functions: importing it runs the static initialisers that
// register the ops with the dispatcher. No pybind11, so the library can use the limited API.
#pragma once

#ifdef FLASHNCE_NO_PYTHON
#define FLASHNCE_PYTHON_MODULE(name)
#else
// Two levels so that a macro argument (e.g. FLASHNCE_MODULE_NAME) is expanded before pasting.
#define FLASHNCE_PYTHON_MODULE(name) FLASHNCE_PYTHON_MODULE_IMPL(name)
#include <Python.h>

#define FLASHNCE_PYTHON_MODULE_IMPL(name)                                            \
  extern "C" PyMODINIT_FUNC PyInit_##name(void) {                                    \
    static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, #name, nullptr, -1, \
                                            nullptr};                                \
    return PyModule_Create(&module_def);                                             \
  }
#endif

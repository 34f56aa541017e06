// The CPU kernel built for one ISA: this file is compiled with that ISA's flags (setup.py
// CPU_ISAS, CMakeLists.txt), so each variant has its own object file and namespace.
#include "../tile_ops_cpu.cpp"

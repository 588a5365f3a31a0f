// The Python module hdkd._C. Loading it registers the hdkd:: ops (schemas.cpp and the kernels'
// TORCH_LIBRARY_IMPL blocks); the module itself only reports how it was built.
#include <pybind11/pybind11.h>

#include <string>

#include "hdkd_build_info.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["torch_version"] = HDKD_TORCH_VERSION;
#ifdef HDKD_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  std::string archs = HDKD_CUDA_ARCHS;
  py::list arch_list;
  size_t start = 0;
  while (start < archs.size()) {
    size_t end = archs.find(';', start);
    if (end == std::string::npos) end = archs.size();
    if (end > start) arch_list.append(archs.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = arch_list;
  info["compiler"] = HDKD_COMPILER;
#ifdef HDKD_WITH_CUDA
  info["cuda_compiler"] = HDKD_CUDA_COMPILER;
#endif
  info["cpu_vector_isa"] = HDKD_VEC_ISA;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hdkd compiled extension: registers the torch.ops.hdkd operators";
  m.def("build_info", &build_info,
        "dict: torch_version, cuda (bool), cuda_archs, compiler, cpu_vector_isa");
}

// comer-port `libtorch` feature: the C ABI between Rust and PyTorch's own readers
// (docs/libtorch.md). Two entry points, each calling back once per tensor with its dotted path
// and a new `torch::Tensor*` that the Rust side owns (tch::Tensor::from_ptr):
//
//   comer_lt_torchscript   torch::jit::load (torch/csrc/jit/serialization/import.cpp), then
//                          the module's object tree: every attribute slot by name.
//   comer_lt_torch_load    torch.load(weights_only=True) (torch/serialization.py) in an
//                          embedded interpreter, through a Python walker the caller passes;
//                          tensors leave Python as libtorch tensors (THPVariable_Unpack).
//
// libtorch's C++ `torch::pickle_load` is not used: it turns collections.OrderedDict into None
// (so every saved `model.state_dict()` fails), and it reads neither `_rebuild_tensor_v3` nor
// legacy (pre-1.6) files. Errors come back as a malloc'd message (free with comer_lt_free);
// no C++ exception crosses into Rust.

#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/script.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>

extern "C" {
typedef void (*comer_lt_tensor_fn)(void *ctx, const char *name, torch::Tensor *tensor);
char *comer_lt_torchscript(const char *path, void *ctx, comer_lt_tensor_fn f);
char *comer_lt_torch_load(const char *path, const char *site, const char *walker_py, void *ctx,
                          comer_lt_tensor_fn f);
void comer_lt_free(char *msg);
}

namespace {

char *message(const std::string &s) { return strdup(s.c_str()); }

std::string join(const std::string &prefix, const std::string &key) {
  return prefix.empty() ? key : prefix + "." + key;
}

// The text comer-port's readers use for a dict key (formats/value.rs `key_text`).
std::string key_text(const c10::IValue &k) {
  if (k.isString()) return k.toStringRef();
  if (k.isInt()) return std::to_string(k.toInt());
  if (k.isBool()) return k.toBool() ? "true" : "false";
  return "<" + k.tagKind() + ">";
}

// Every tensor below `v`: dicts by key, lists and tuples by index, objects (modules) by
// attribute name, in slot order.
void walk(const c10::IValue &v, const std::string &prefix, void *ctx, comer_lt_tensor_fn f) {
  if (v.isTensor()) {
    f(ctx, prefix.c_str(), new torch::Tensor(v.toTensor()));
  } else if (v.isGenericDict()) {
    for (const auto &kv : v.toGenericDict()) walk(kv.value(), join(prefix, key_text(kv.key())), ctx, f);
  } else if (v.isList()) {
    auto list = v.toList();
    for (size_t i = 0; i < list.size(); ++i) walk(list.get(i), join(prefix, std::to_string(i)), ctx, f);
  } else if (v.isTuple()) {
    const auto &items = v.toTupleRef().elements();
    for (size_t i = 0; i < items.size(); ++i) walk(items[i], join(prefix, std::to_string(i)), ctx, f);
  } else if (v.isObject()) {
    auto obj = v.toObject();
    auto type = obj->type();
    for (size_t i = 0; i < type->numAttributes(); ++i)
      walk(obj->getSlot(i), join(prefix, type->getAttributeName(i)), ctx, f);
  }
}

// The pending Python exception as text (type: message), cleared.
std::string fetch_python_error() {
  PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  std::string out = "Python error";
  if (value != nullptr) {
    PyObject *s = PyObject_Str(value);
    const char *text = s ? PyUnicode_AsUTF8(s) : nullptr;
    const char *name = type ? reinterpret_cast<PyTypeObject *>(type)->tp_name : "Exception";
    out = std::string(name) + ": " + (text ? text : "(no message)");
    Py_XDECREF(s);
  }
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  PyErr_Clear();
  return out;
}

}  // namespace

char *comer_lt_torchscript(const char *path, void *ctx, comer_lt_tensor_fn f) {
  try {
    torch::jit::Module module = torch::jit::load(path, c10::Device(c10::kCPU));
    walk(module._ivalue(), "", ctx, f);
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}

char *comer_lt_torch_load(const char *path, const char *site, const char *walker_py, void *ctx,
                          comer_lt_tensor_fn f) {
  // One interpreter for the process, started once on first use (whichever thread comes first)
  // and never finalised: torch cannot be imported twice into a re-initialised interpreter.
  static std::once_flag started;
  std::call_once(started, [] {
    if (!Py_IsInitialized()) {
      Py_InitializeEx(0);
      // Hand the GIL back, so that any thread can take it below.
      PyEval_SaveThread();
    }
  });
  PyGILState_STATE gil = PyGILState_Ensure();
  std::string err;
  PyObject *sys_path = PySys_GetObject("path");  // borrowed
  PyObject *site_str = PyUnicode_FromString(site);
  PyObject *globals = PyDict_New();
  PyObject *ran = nullptr, *walker = nullptr, *pairs = nullptr;
  if (sys_path == nullptr || site_str == nullptr || globals == nullptr) {
    err = fetch_python_error();
    goto done;
  }
  if (PySequence_Contains(sys_path, site_str) == 0 && PyList_Insert(sys_path, 0, site_str) != 0) {
    err = fetch_python_error();
    goto done;
  }
  PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
  ran = PyRun_String(walker_py, Py_file_input, globals, globals);
  if (ran == nullptr) {
    err = fetch_python_error();
    goto done;
  }
  walker = PyDict_GetItemString(globals, "tensors");  // borrowed
  if (walker == nullptr) {
    err = "the walker defines no `tensors(path)`";
    goto done;
  }
  pairs = PyObject_CallFunction(walker, "s", path);
  if (pairs == nullptr) {
    err = fetch_python_error();
    goto done;
  }
  try {
    Py_ssize_t n = PyList_Size(pairs);
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject *pair = PyList_GetItem(pairs, i);  // borrowed: (name, tensor)
      PyObject *name = PyTuple_GetItem(pair, 0);
      PyObject *tensor = PyTuple_GetItem(pair, 1);
      const char *text = name ? PyUnicode_AsUTF8(name) : nullptr;
      if (text == nullptr || tensor == nullptr || !THPVariable_Check(tensor)) {
        err = "the walker returned an item that is not (str, torch.Tensor)";
        PyErr_Clear();
        break;
      }
      f(ctx, text, new torch::Tensor(THPVariable_Unpack(tensor)));
    }
  } catch (const std::exception &e) {
    err = e.what();
  }
done:
  Py_XDECREF(pairs);
  Py_XDECREF(ran);
  Py_XDECREF(globals);
  Py_XDECREF(site_str);
  PyGILState_Release(gil);
  return err.empty() ? nullptr : message(err);
}

void comer_lt_free(char *msg) { free(msg); }

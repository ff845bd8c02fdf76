// contract.h — the facts every backend agrees on, stated once for C++ (CPU kernels, CUDA block programs, their
// torch glue). gtkernels/contract.py states them for Python; gtkernels._C.contract() (module.cpp) exports these,
// and tests/test_contract.py checks that the two agree. Plain C++17, no headers: nvcc compiles it for the device.
#pragma once

namespace gt {

constexpr double kDistanceEps = 1e-16;  // added to the distance before inversion: rinv = 1/(r + ε)
constexpr int kMaxWidth = 128;          // widest Linear layer of ψω / φ
constexpr int kMaxLayers = 5;           // Linear layers of ψω / φ: 1 (in) + up to 3 hidden h→h + 1 (out)

// Activation ids passed to every kernel (gtkernels.contract.Activation).
enum Activation : int { kActNone = 0, kActRelu = 1, kActGelu = 2 };

}  // namespace gt

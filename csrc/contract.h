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

// R-MAT relative attention (docs/semantics.md §6): φ's activation, the distance basis, the relation channels.
constexpr double kLeakySlope = 0.1;       // LeakyReLU slope inside φ_K and φ_V
constexpr int kBasisSize = 32;            // distance-basis functions of the released model (the kernels take any)
constexpr double kBasisCutoff = 20.0;     // Å; x = (d + offset) / cutoff, basis 0 for x >= 1
constexpr int kEnvelopeExponent = 5;      // p = exponent + 1 in the envelope polynomial
constexpr double kDistanceOffset = 1e-6;  // Å, added to every distance before the basis
constexpr int kBondChannels = 8;          // b_ij channels 0-7
constexpr int kHopChannels = 6;           // b_ij channels 8-13 (one per hop bucket)

// The int16 graph code of b_ij's channels 0-13 (gtkernels/ops/relation_code.py documents the layout).
constexpr int kCodeMaskFlagBit = 0;   // channel 0
constexpr int kCodeBondTypeShift = 1;  // bond type t (3 bits): channel t for 1 <= t <= kCodeBondTypes
constexpr int kCodeBondTypes = 4;
constexpr int kCodeFlagShift = 4;      // aromatic, conjugated, in ring: bits 4, 5, 6 = channels 5, 6, 7
constexpr int kCodeHopShift = 7;       // hop bucket h (3 bits): channel kBondChannels + h for h < kCodeHopBuckets
constexpr int kCodeHopBuckets = kHopChannels;
constexpr int kCodeFieldMask = 7;
constexpr int kCodeLimit = 1 << (kCodeHopShift + 3);  // every valid code is below this

}  // namespace gt

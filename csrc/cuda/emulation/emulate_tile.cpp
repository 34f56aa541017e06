// Executes the CUDA tile core (tile_api.cu, tile_launch.cuh, tile_walk.cuh) on the CPU through
// cuda_emulation.h and compares it with a naive float64 evaluation of the contract
// (python/flashnce/core/spec.py): the shared epilogue and plain loops over the materialised
// N x M roles. Checked: row / column stats (and their -inf pattern), dx, dy, d_alpha, d_beta,
// d_theta, exact zeros for fully skipped rows / columns, for every relation (none, diagonal with
// offsets, targets, labels, csr with skip and positive roles), both flags, row-only columns
// (cols_both < M), a bias, every epilogue kind and dtype, shapes that are not tile multiples.
// It checks the walk and the launchers (indices, roles, shared-memory phases, reductions,
// workspace, finalize), not the GPU itself. Build and run (tests/test_cuda_backend.py does this
// when g++ and the CUDA headers are present):
//   g++ -std=c++20 -O1 -pthread -Icsrc -Icsrc/cuda -I$CUDA_HOME/include \
//       csrc/cuda/emulation/emulate_tile.cpp -o emulate && ./emulate [quick]
#include "cuda_emulation.h"
// (the emulation header must come first)
#include "tile_api.cu"
#include "tile_launch.cuh"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace flashnce {
namespace cuda {
namespace detail {
FLASHNCE_INSTANTIATE_TILE(float)
FLASHNCE_INSTANTIATE_TILE(double)
FLASHNCE_INSTANTIATE_TILE(__nv_bfloat16)
FLASHNCE_INSTANTIATE_TILE(__half)
}  // namespace detail
}  // namespace cuda
}  // namespace flashnce

using namespace flashnce;
using namespace flashnce::cuda;

namespace {

// Which pairs a case marks, on top of the relation's random index tensors.
struct Case {
  const char* name;
  int64_t n, m, k;
  int relation;
  int64_t flags;
  int64_t diag_offset;
  int64_t cols_both;  // -1: all m columns
  bool skip_row1 = false;  // csr: row 1 lists every column as skip (a fully skipped row)
  bool skip_col2 = false;  // csr: every row lists column 2 as skip (a fully skipped column)
};

template <class T>
DType dtype_of() {
  if (std::is_same<T, float>::value) return DType::kFloat32;
  if (std::is_same<T, double>::value) return DType::kFloat64;
  if (std::is_same<T, __nv_bfloat16>::value) return DType::kBFloat16;
  return DType::kFloat16;
}

template <class T>
T from_double(double v) {
  if constexpr (std::is_same<T, __half>::value) return __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same<T, __nv_bfloat16>::value)
    return __float2bfloat16_rn(static_cast<float>(v));
  else return static_cast<T>(v);
}
template <class T>
double to_double(T v) {
  if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __bfloat162float(v);
  else return static_cast<double>(v);
}

// Max-norm relative error with a floor on the scale; infinities must match exactly, NaN fails.
double rel_err(const std::vector<double>& a, const std::vector<double>& e, double floor = 1e-6) {
  double err = 0, scale = floor;
  for (size_t i = 0; i < e.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    if (std::isinf(e[i]) || std::isinf(a[i])) {
      if (a[i] != e[i]) return INFINITY;
      continue;
    }
    err = std::max(err, std::fabs(a[i] - e[i]));
    scale = std::max(scale, std::fabs(e[i]));
  }
  return err / scale;
}

// The relation's index tensors, drawn at random, and the roles they define (spec.py, read
// directly: skip > positive > negative; 0 skip, 1 positive, 2 negative).
struct Relation {
  std::vector<int64_t> targets, row_labels, col_labels;
  std::vector<int64_t> indptr, indices, roles, t_indptr, t_indices, t_roles;

  void draw(const Case& cs, std::mt19937_64& rng) {
    const int64_t n = cs.n, m = cs.m;
    std::uniform_int_distribution<int64_t> col(0, std::max<int64_t>(m - 1, 0)), label(0, 3);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    targets.resize(n);
    for (auto& t : targets) t = col(rng);
    row_labels.resize(n);
    col_labels.resize(m);
    for (auto& v : row_labels) v = label(rng);
    for (auto& v : col_labels) v = label(rng);
    // csr: each row lists ~15% of the columns, roles half skip / half positive.
    indptr.assign(n + 1, 0);
    indices.clear();
    roles.clear();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const bool full = (cs.skip_row1 && i == 1) || (cs.skip_col2 && j == 2);
        if (full || u(rng) < 0.15) {
          indices.push_back(j);
          roles.push_back(full || u(rng) < 0.5 ? kRoleSkip : kRolePositive);
        }
      }
      indptr[i + 1] = static_cast<int64_t>(indices.size());
    }
    // Transposed lists (per column, rows increasing), as Relation.csr builds them.
    t_indptr.assign(m + 1, 0);
    for (int64_t j : indices) ++t_indptr[j + 1];
    for (int64_t j = 0; j < m; ++j) t_indptr[j + 1] += t_indptr[j];
    t_indices.assign(indices.size(), 0);
    t_roles.assign(indices.size(), 0);
    std::vector<int64_t> fill(t_indptr.begin(), t_indptr.end() - 1);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e) {
        const int64_t at = fill[indices[e]]++;
        t_indices[at] = i;
        t_roles[at] = roles[e];
      }
  }

  int role(const Case& cs, int64_t i, int64_t j) const {
    bool positive = false, skip = false;
    const bool diag = j == i + cs.diag_offset;
    if (cs.relation == kRelDiagonal) positive = diag;
    if (cs.relation == kRelTargets) positive = j == targets[i];
    if (cs.relation == kRelLabels) positive = row_labels[i] == col_labels[j];
    if (cs.relation == kRelCsr)
      for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e)
        if (indices[e] == j) {
          skip = roles[e] == kRoleSkip;
          positive = roles[e] == kRolePositive;
        }
    if ((cs.flags & kFlagSkipSelf) && diag) skip = true;
    if ((cs.flags & kFlagSkipPositives) && positive) skip = true;
    return skip ? 0 : positive ? 1 : 2;
  }

  RelationIndex index() const {
    RelationIndex ix;
    ix.targets = targets.data();
    ix.row_labels = row_labels.data();
    ix.col_labels = col_labels.data();
    ix.indptr = indptr.data();
    ix.indices = indices.data();
    ix.roles = roles.data();
    ix.t_indptr = t_indptr.data();
    ix.t_indices = t_indices.data();
    ix.t_roles = t_roles.data();
    ix.nnz = static_cast<int64_t>(indices.size());
    return ix;
  }
};

double lse(const std::vector<double>& v) {
  double mx = -INFINITY, s = 0;
  for (double l : v) mx = std::max(mx, l);
  for (double l : v) s += std::isinf(l) ? 0.0 : std::exp(l - mx);
  return s > 0 ? mx + std::log(s) : -INFINITY;
}

template <class T, int KIND>
int run_case(const Case& cs, double tol, std::mt19937_64& rng) {
  using Acc = typename Convert<T>::Acc;
  using E64 = Epilogue<KIND, double>;
  constexpr int R = E64::kR;
  const int64_t n = cs.n, m = cs.m, K = cs.k, m0 = cs.cols_both < 0 ? m : cs.cols_both;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unif(0.2, 2.0);

  // Inputs rounded to T; per-row scalars from the rounded operands, as the GEMM sees them.
  std::vector<T> x(n * K), y(m * K);
  std::vector<double> xd(n * K), yd(m * K);
  auto features = [&](std::vector<T>& f, std::vector<double>& fd) {
    for (size_t i = 0; i < f.size(); ++i) {
      f[i] = from_double<T>(normal(rng) / std::sqrt(double(K)));
      fd[i] = to_double(f[i]);
    }
  };
  features(x, xd);
  features(y, yd);
  auto scalars = [&](const std::vector<double>& f, int64_t rows) {
    std::vector<double> s(rows * (R > 0 ? R : 1));
    for (int64_t i = 0; i < rows; ++i) {
      double sq = 0;
      for (int64_t k = 0; k < K; ++k) sq += f[i * K + k] * f[i * K + k];
      if (R == 1) s[i] = KIND == kCosine ? std::max(std::sqrt(sq), 1e-12) : sq;
      if (R == 3) {
        const double rho = unif(rng);
        s[i * 3] = std::max(std::sqrt(sq), 1e-12);
        s[i * 3 + 1] = rho;
        s[i * 3 + 2] = std::sinh(rho);
      }
    }
    return s;
  };
  std::vector<double> ad = scalars(xd, n), bd = scalars(yd, m);
  std::vector<Acc> a(ad.begin(), ad.end()), b(bd.begin(), bd.end());
  for (size_t i = 0; i < a.size(); ++i) ad[i] = a[i];  // the kernels see the rounded scalars
  for (size_t i = 0; i < b.size(); ++i) bd[i] = b[i];
  const Acc theta[3] = {Acc(1.7), Acc(0.9), Acc(0.3)};  // scale, inv_sqrt_c, bias
  const double scale = theta[0], ksc = theta[1], bias = theta[2];
  const double kappa = std::is_same<T, double>::value ? 1e-14 : 1e-6;
  std::vector<Acc> g_row(n), g_col(m0);
  for (auto& v : g_row) v = static_cast<Acc>(unif(rng) - 1.0);
  for (auto& v : g_col) v = static_cast<Acc>(unif(rng) - 1.0);
  if (n > 3) g_row[3] = Acc(0);  // a zero upstream gradient must contribute exactly nothing
  Relation rel;
  rel.draw(cs, rng);

  // Reference: the materialised float64 tile of the contract.
  auto sc = [&](const std::vector<double>& s, int64_t i) {
    RowScalars<double> r{};
    for (int t = 0; t < R; ++t) r.v[t] = s[i * R + t];
    return r;
  };
  std::vector<double> L(n * m, -INFINITY), P(n * m, 0.0);
  std::vector<int> role(n * m);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double p = 0;
      for (int64_t k = 0; k < K; ++k) p += xd[i * K + k] * yd[j * K + k];
      P[i * m + j] = p;
      role[i * m + j] = rel.role(cs, i, j);
      if (role[i * m + j] != 0)
        L[i * m + j] = scale * E64::eval(p, sc(ad, i), sc(bd, j), ksc, kappa).h + bias;
    }
  std::vector<double> rs(n), cst(m0);
  for (int64_t i = 0; i < n; ++i)
    rs[i] = lse(std::vector<double>(L.begin() + i * m, L.begin() + (i + 1) * m));
  for (int64_t j = 0; j < m0; ++j) {
    std::vector<double> colv(n);
    for (int64_t i = 0; i < n; ++i) colv[i] = L[i * m + j];
    cst[j] = lse(colv);
  }
  std::vector<double> dx(n * K, 0), dy(m * K, 0), da(n * R, 0), db(m * R, 0), dth(3, 0);
  std::vector<bool> row_live(n, false), col_live(m, false);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      if (role[i * m + j] == 0) continue;
      row_live[i] = col_live[j] = true;
      const auto ai = sc(ad, i), bj = sc(bd, j);
      const auto ev = E64::eval(P[i * m + j], ai, bj, ksc, kappa);
      const double l = scale * ev.h + bias;
      double g = g_row[i] * std::exp(l - rs[i]);
      if (j < m0) g += g_col[j] * std::exp(l - cst[j]);
      RowScalars<double> ga{}, gb{};
      const double gp = E64::grad(ev, P[i * m + j], ai, bj, ksc, g * scale, ga, gb);
      dth[0] += g * ev.h;
      dth[2] += g;
      for (int t = 0; t < R; ++t) { da[i * R + t] += ga.v[t]; db[j * R + t] += gb.v[t]; }
      for (int64_t k = 0; k < K; ++k) {
        dx[i * K + k] += gp * yd[j * K + k];
        dy[j * K + k] += gp * xd[i * K + k];
      }
    }
  dth[1] = KIND == kHyperbolic ? scale * dth[0] / ksc : 0.0;
  auto finalize = [&](std::vector<double>& d, const std::vector<double>& s, int64_t rows) {
    for (int64_t i = 0; i < rows; ++i) {
      RowScalars<double> g{};
      for (int t = 0; t < R; ++t) g.v[t] = d[i * R + t];
      E64::finalize(sc(s, i), g);
      for (int t = 0; t < R; ++t) d[i * R + t] = g.v[t];
    }
  };
  finalize(da, ad, n);
  finalize(db, bd, m);

  // The core, emulated, through its public entry points.
  TileProblem pb;
  pb.dtype = dtype_of<T>();
  pb.x = x.data(); pb.y = y.data(); pb.alpha = a.data(); pb.beta = b.data(); pb.theta = theta;
  pb.n = n; pb.m = m; pb.k = K; pb.cols_both = m0;
  pb.kind = KIND; pb.stat = kStatLse; pb.relation = cs.relation; pb.flags = cs.flags;
  pb.diag_offset = cs.diag_offset; pb.index = rel.index(); pb.kappa = kappa;
  std::vector<Acc> row_stat(n + 1), col_stat(m0 + 1);
  int failures = 0;
  auto fail = [&](const char* what, double err) {
    std::printf("FAIL %s dtype=%d kind=%d n=%lld m=%lld k=%lld: %s rel err %.3e > %.1e\n", cs.name,
                int(pb.dtype), KIND, (long long)n, (long long)m, (long long)K, what, err, tol);
    ++failures;
  };
  if (tile_forward(pb, row_stat.data(), col_stat.data(), nullptr) != cudaSuccess)
    fail("tile_forward status", INFINITY);
  // The backward gets the float64 stats rounded to Acc, so that it is checked on its own.
  std::vector<Acc> rsa(rs.begin(), rs.end()), csa(cst.begin(), cst.end());
  rsa.push_back(0); csa.push_back(0);
  std::vector<T> dxa(n * K + 1), dya(m * K + 1);
  std::vector<Acc> daa(n * R + 1, Acc(7)), dba(m * R + 1, Acc(7)), dtha(3, Acc(7));
  std::vector<unsigned char> ws(tile_backward_workspace_bytes(pb) + 256);
  void* wsp = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
  std::memset(wsp, 0x7f, tile_backward_workspace_bytes(pb));  // contents must be ignored
  TileGrads grads{dxa.data(), dya.data(), daa.data(), dba.data(), dtha.data()};
  if (tile_backward(pb, rsa.data(), csa.data(), g_row.data(), g_col.data(), grads, wsp,
                    nullptr) != cudaSuccess)
    fail("tile_backward status", INFINITY);

  auto dbl = [](const auto& v, size_t count) {
    std::vector<double> out(count);
    for (size_t i = 0; i < count; ++i) out[i] = to_double(v[i]);
    return out;
  };
  const double errs[] = {rel_err(dbl(row_stat, n), rs), rel_err(dbl(col_stat, m0), cst),
                         rel_err(dbl(dxa, n * K), dx), rel_err(dbl(dya, m * K), dy),
                         rel_err(dbl(daa, n * R), da), rel_err(dbl(dba, m * R), db),
                         rel_err(dbl(dtha, 3), dth)};
  const char* names[] = {"row_stat", "col_stat", "dx", "dy", "d_alpha", "d_beta", "d_theta"};
  for (int q = 0; q < 7; ++q)
    if (!(errs[q] <= tol)) fail(names[q], errs[q]);
  // Fully skipped rows / columns: gradient exactly zero (never NaN, never a stray term).
  for (int64_t i = 0; i < n; ++i) {
    if (row_live[i]) continue;
    bool zero = true;
    for (int64_t k = 0; k < K; ++k) zero = zero && to_double(dxa[i * K + k]) == 0.0;
    for (int t = 0; t < R; ++t) zero = zero && daa[i * R + t] == Acc(0);
    if (!zero) fail("dx / d_alpha of a fully skipped row", 1);
  }
  for (int64_t j = 0; j < m; ++j) {
    if (col_live[j]) continue;
    bool zero = true;
    for (int64_t k = 0; k < K; ++k) zero = zero && to_double(dya[j * K + k]) == 0.0;
    for (int t = 0; t < R; ++t) zero = zero && dba[j * R + t] == Acc(0);
    if (!zero) fail("dy / d_beta of a fully skipped column", 1);
  }
  return failures;
}

// The relation cases (names say what each adds); shapes are not multiples of the tiles.
const Case kRelationCases[] = {
    {"skip_self", 37, 37, 5, kRelNone, kFlagSkipSelf, 0, -1},
    {"skip_self_offset", 40, 75, 9, kRelNone, kFlagSkipSelf, 33, -1},
    {"skip_self_neg_offset", 70, 33, 4, kRelNone, kFlagSkipSelf, -40, -1},
    {"diagonal_offset", 35, 70, 6, kRelDiagonal, 0, 3, -1},
    {"diagonal_skip_positives", 33, 40, 3, kRelDiagonal, kFlagSkipPositives, -2, -1},
    {"diagonal_skip_self_rowonly", 40, 70, 7, kRelDiagonal, kFlagSkipSelf, 0, 40},
    {"targets_skip_positives", 45, 66, 5, kRelTargets, kFlagSkipPositives, 0, -1},
    {"targets_rowonly", 66, 45, 3, kRelTargets, 0, 0, 20},
    {"labels", 50, 37, 5, kRelLabels, 0, 0, -1},
    {"labels_both_flags", 37, 50, 4, kRelLabels, kFlagSkipSelf | kFlagSkipPositives, 1, -1},
    {"csr_full_skips", 70, 39, 6, kRelCsr, 0, 0, -1, true, true},
    {"csr_skip_positives_rowonly", 39, 70, 5, kRelCsr, kFlagSkipPositives, 0, 35, true, false},
    {"csr_skip_self_no_col_stats", 34, 34, 4, kRelCsr, kFlagSkipSelf, 0, 0, false, true},
};
const Case kPlainCases[] = {
    {"none", 70, 130, 37, kRelNone, 0, 0, -1},
    {"none_rowonly", 130, 70, 37, kRelNone, 0, 0, 41},
    {"none_tiny", 1, 5, 3, kRelNone, 0, 0, -1},
    {"none_k0", 9, 9, 0, kRelNone, 0, 0, -1},
    {"none_no_rows", 0, 5, 3, kRelNone, 0, 0, -1},
};

template <class T, int KIND>
int run_kind(double tol, bool relations, std::mt19937_64& rng) {
  int f = 0;
  for (const Case& c : kPlainCases) f += run_case<T, KIND>(c, tol, rng);
  if (relations)
    for (const Case& c : kRelationCases) f += run_case<T, KIND>(c, tol, rng);
  return f;
}

// Every kind sees the plain cases; the relation cases run on every kind for fp64 / fp32 and on
// two kinds for the 16-bit types (the roles do not depend on the dtype; the rounding does).
template <class T>
int run_dtype(double tol, bool all_relations, std::mt19937_64& rng) {
  int f = 0;
  f += run_kind<T, kDot>(tol, true, rng);
  f += run_kind<T, kSqEuclidean>(tol, all_relations, rng);
  f += run_kind<T, kEuclidean>(tol, all_relations, rng);
  f += run_kind<T, kHyperbolic>(tol, true, rng);
  f += run_kind<T, kCosine>(tol, all_relations, rng);
  return f;
}

// Invalid problems are refused, not run with a default kind / stat / relation.
int check_refusals() {
  int f = 0;
  auto refused = [&](const char* what, TileProblem pb) {
    std::vector<double> out(8);
    if (tile_forward(pb, out.data(), out.data(), nullptr) != cudaErrorInvalidValue) {
      std::printf("FAIL: %s was not refused\n", what);
      ++f;
    }
  };
  TileProblem base;
  base.dtype = DType::kFloat64;
  base.n = 2; base.m = 2; base.k = 1; base.cols_both = 2;
  TileProblem pb = base; pb.kind = kNumEpilogueKinds; refused("unknown kind", pb);
  pb = base; pb.stat = kNumStats; refused("unknown stat", pb);
  pb = base; pb.relation = kNumRelations; refused("unknown relation", pb);
  pb = base; pb.flags = 4; refused("unknown flag", pb);
  pb = base; pb.cols_both = 3; refused("cols_both > m", pb);
  pb = base; pb.relation = kRelTargets; refused("targets without a tensor", pb);
  pb = base; pb.relation = kRelCsr; refused("csr without indptr", pb);
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::mt19937_64 rng(1234);
  int failures = check_refusals();
  failures += run_dtype<double>(1e-10, true, rng);
  if (!quick) {
    failures += run_dtype<float>(2e-4, true, rng);
    failures += run_dtype<__nv_bfloat16>(2e-2, false, rng);
    failures += run_dtype<__half>(5e-3, false, rng);
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}

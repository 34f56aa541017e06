// Executes the CUDA tile core (tile_api.cu, tile_launch.cuh, tile_walk.cuh) on the CPU through
// cuda_emulation.h and compares it with a naive float64 evaluation of the contract
// (python/flashnce/core/spec.py): the shared epilogue and plain loops over the materialised
// N x M roles. Checked, for each statistic (lse, pair_sum, masked_sum): row / column stats (and
// their empty values: -inf for lse, exactly 0 for pair_sum, (-inf, 0) for masked_sum, whose
// masked sum is also exactly 0 for a row / column without a positive), dx, dy, d_alpha,
// d_beta, d_theta, exact
// zeros for fully skipped rows / columns, for every relation (none, diagonal with offsets,
// targets, labels, csr with skip and positive roles), both flags, row-only columns
// (cols_both < M), a bias, large logits, every epilogue kind and dtype, shapes that are not tile
// multiples (N = 1 and N = 0 included). For pair_sum also tile_forward_grad: its stats bitwise
// equal to tile_forward's (same folds, same order), its gradients against the float64 backward
// with g_row = 1, g_col = 0; for lse and masked_sum its refusal. It checks the walk and the
// launchers
// (indices, roles, shared-memory phases, reductions, workspace, finalize), not the GPU itself.
// Build and run (tests/test_cuda_backend.py does this when g++ and the CUDA headers are present):
//   g++ -std=c++20 -O1 -pthread -Icsrc -Icsrc/cuda -I$CUDA_HOME/include \
//       csrc/cuda/emulation/emulate_tile.cpp -o emulate && ./emulate [quick] [STAT...]
// (STAT: lse, pair_sum, masked_sum; none: all of them).
// `./emulate op IN OUT` runs one problem read from a file through the three entry points and
// writes the results (the format at run_op_file), so that tests/test_cuda_backend.py can check
// the emulated kernels against the Python float64 oracle (backends/dense.py) as well.
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
  double scale = 1.7;      // theta's scale (large: logits far into the softplus / exp tails)
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

// pair_sum in float64, straight from the contract: f(l, z) = softplus(-z l) = log(1 + exp(-z l))
// and f'(l, z) = -z sigmoid(-z l) = -z / (1 + exp(z l)), z = +1 for positives, -1 otherwise.
double pair_f(double l, bool positive) {
  const double u = positive ? -l : l;
  return u > 30 ? u + std::log1p(std::exp(-u)) : std::log1p(std::exp(u));
}
double pair_slope(double l, bool positive) {
  const double z = positive ? 1.0 : -1.0;
  return -z / (1.0 + std::exp(z * l));
}

const char* stat_name(int stat) {
  return stat == kStatLse ? "lse" : stat == kStatPairSum ? "pair_sum" : "masked_sum";
}

template <class T, int KIND>
int run_case(const Case& cs, int stat, double tol, std::mt19937_64& rng) {
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
  const Acc theta[3] = {Acc(cs.scale), Acc(0.9), Acc(0.3)};  // scale, inv_sqrt_c, bias
  const double scale = theta[0], ksc = theta[1], bias = theta[2];
  const double kappa = std::is_same<T, double>::value ? 1e-14 : 1e-6;
  const bool sum = stat == kStatPairSum, msum = stat == kStatMaskedSum;
  const int64_t w = kStatStateWidth[stat];  // values per row of the state (masked_sum: 2)
  std::vector<Acc> g_row(n * w), g_col(m0 * w);
  for (auto& v : g_row) v = static_cast<Acc>(unif(rng) - 1.0);
  for (auto& v : g_col) v = static_cast<Acc>(unif(rng) - 1.0);
  // A zero upstream gradient must contribute exactly nothing (masked_sum: row 3 both values,
  // row 4 the lse's alone, next to a non-zero masked-sum gradient).
  if (n > 3) for (int64_t v = 0; v < w; ++v) g_row[3 * w + v] = Acc(0);
  if (msum && n > 4) g_row[4 * w] = Acc(0);
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
  // Stats [n, w] / [m0, w]: value 0 (lse or pair_sum), for masked_sum value 1 = the sum of the
  // positives' logits.
  std::vector<double> rs(n * w), cst(m0 * w);
  for (int64_t i = 0; i < n; ++i) {
    if (sum) {
      rs[i] = 0;
      for (int64_t j = 0; j < m; ++j)
        if (role[i * m + j] != 0) rs[i] += pair_f(L[i * m + j], role[i * m + j] == 1);
    } else {
      rs[i * w] = lse(std::vector<double>(L.begin() + i * m, L.begin() + (i + 1) * m));
    }
    if (msum) {
      rs[i * w + 1] = 0;
      for (int64_t j = 0; j < m; ++j)
        if (role[i * m + j] == 1) rs[i * w + 1] += L[i * m + j];
    }
  }
  for (int64_t j = 0; j < m0; ++j) {
    std::vector<double> colv(n);
    for (int64_t i = 0; i < n; ++i) colv[i] = L[i * m + j];
    if (sum) {
      cst[j] = 0;
      for (int64_t i = 0; i < n; ++i)
        if (role[i * m + j] != 0) cst[j] += pair_f(L[i * m + j], role[i * m + j] == 1);
    } else {
      cst[j * w] = lse(colv);
    }
    if (msum) {
      cst[j * w + 1] = 0;
      for (int64_t i = 0; i < n; ++i)
        if (role[i * m + j] == 1) cst[j * w + 1] += L[i * m + j];
    }
  }
  std::vector<bool> row_live(n, false), col_live(m, false), row_pos(n, false), col_pos(m, false);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      if (role[i * m + j] != 0) row_live[i] = col_live[j] = true;
      if (role[i * m + j] == 1) row_pos[i] = col_pos[j] = true;
    }

  // The float64 backward for upstream gradients (gr [n, w], gc [m0, w]).
  struct Grads {
    std::vector<double> dx, dy, da, db, dth;
  };
  auto reference_grads = [&](const auto& gr, const auto& gc) {
    Grads o{std::vector<double>(n * K, 0), std::vector<double>(m * K, 0),
            std::vector<double>(n * R, 0), std::vector<double>(m * R, 0),
            std::vector<double>(3, 0)};
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        if (role[i * m + j] == 0) continue;
        const auto ai = sc(ad, i), bj = sc(bd, j);
        const auto ev = E64::eval(P[i * m + j], ai, bj, ksc, kappa);
        const double l = scale * ev.h + bias;
        double g;
        if (sum) {
          g = (double(gr[i]) + (j < m0 ? double(gc[j]) : 0.0)) *
              pair_slope(l, role[i * m + j] == 1);
        } else {
          g = gr[i * w] * std::exp(l - rs[i * w]);
          if (j < m0) g += gc[j * w] * std::exp(l - cst[j * w]);
          if (msum && role[i * m + j] == 1)
            g += double(gr[i * w + 1]) + (j < m0 ? double(gc[j * w + 1]) : 0.0);
        }
        RowScalars<double> ga{}, gb{};
        const double gp = E64::grad(ev, P[i * m + j], ai, bj, ksc, g * scale, ga, gb);
        o.dth[0] += g * ev.h;
        o.dth[2] += g;
        for (int t = 0; t < R; ++t) { o.da[i * R + t] += ga.v[t]; o.db[j * R + t] += gb.v[t]; }
        for (int64_t k = 0; k < K; ++k) {
          o.dx[i * K + k] += gp * yd[j * K + k];
          o.dy[j * K + k] += gp * xd[i * K + k];
        }
      }
    o.dth[1] = KIND == kHyperbolic ? scale * o.dth[0] / ksc : 0.0;
    auto finalize = [&](std::vector<double>& d, const std::vector<double>& s, int64_t rows) {
      for (int64_t i = 0; i < rows; ++i) {
        RowScalars<double> g{};
        for (int t = 0; t < R; ++t) g.v[t] = d[i * R + t];
        E64::finalize(sc(s, i), g);
        for (int t = 0; t < R; ++t) d[i * R + t] = g.v[t];
      }
    };
    finalize(o.da, ad, n);
    finalize(o.db, bd, m);
    return o;
  };

  // The core, emulated, through its public entry points.
  TileProblem pb;
  pb.dtype = dtype_of<T>();
  pb.x = x.data(); pb.y = y.data(); pb.alpha = a.data(); pb.beta = b.data(); pb.theta = theta;
  pb.n = n; pb.m = m; pb.k = K; pb.cols_both = m0;
  pb.kind = KIND; pb.stat = stat; pb.relation = cs.relation; pb.flags = cs.flags;
  pb.diag_offset = cs.diag_offset; pb.index = rel.index(); pb.kappa = kappa;
  int failures = 0;
  auto fail = [&](const char* what, double err) {
    std::printf("FAIL %s stat=%s dtype=%d kind=%d n=%lld m=%lld k=%lld: %s rel err %.3e > %.1e\n",
                cs.name, stat_name(stat), int(pb.dtype), KIND, (long long)n, (long long)m,
                (long long)K, what, err, tol);
    ++failures;
  };
  auto dbl = [](const auto& v, size_t count) {
    std::vector<double> out(count);
    for (size_t i = 0; i < count; ++i) out[i] = to_double(v[i]);
    return out;
  };
  // Outputs of one call; one spare element each (nothing may be written past the end) and
  // non-zero fill (every element must be written).
  struct Out {
    std::vector<Acc> row_stat, col_stat;
    std::vector<T> dx, dy;
    std::vector<Acc> da, db, dth;
    TileGrads grads() {
      return TileGrads{dx.data(), dy.data(), da.data(), db.data(), dth.data()};
    }
  };
  auto make_out = [&] {
    return Out{std::vector<Acc>(n * w + 1, Acc(7)), std::vector<Acc>(m0 * w + 1, Acc(7)),
               std::vector<T>(n * K + 1, from_double<T>(7)),
               std::vector<T>(m * K + 1, from_double<T>(7)), std::vector<Acc>(n * R + 1, Acc(7)),
               std::vector<Acc>(m * R + 1, Acc(7)), std::vector<Acc>(3, Acc(7))};
  };
  const size_t ws_bytes = tile_backward_workspace_bytes(pb);
  std::vector<unsigned char> ws(ws_bytes + 256);
  void* wsp = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
  auto poison_workspace = [&] { std::memset(wsp, 0x7f, ws_bytes); };  // contents are ignored

  auto check_stats = [&](const char* tag, const Out& o) {
    const std::string t = tag;
    const double e_row = rel_err(dbl(o.row_stat, n * w), rs);
    const double e_col = rel_err(dbl(o.col_stat, m0 * w), cst);
    if (!(e_row <= tol)) fail((t + "row_stat").c_str(), e_row);
    if (!(e_col <= tol)) fail((t + "col_stat").c_str(), e_col);
    if (to_double(o.row_stat[n * w]) != 7 || to_double(o.col_stat[m0 * w]) != 7)
      fail((t + "stat written past the end").c_str(), 1);
    // masked_sum: exactly 0 for a row / column without a positive (empty ones included).
    for (int64_t i = 0; i < n; ++i)
      if (msum && !row_pos[i] && o.row_stat[i * w + 1] != Acc(0))
        fail((t + "masked sum of a row without positives != 0").c_str(), 1);
    for (int64_t j = 0; j < m0; ++j)
      if (msum && !col_pos[j] && o.col_stat[j * w + 1] != Acc(0))
        fail((t + "masked sum of a column without positives != 0").c_str(), 1);
    // Empty rows / columns: exactly the stat's empty value (lse's -inf is exact in rel_err).
    for (int64_t i = 0; i < n; ++i)
      if (sum && !row_live[i] && o.row_stat[i] != Acc(0))
        fail((t + "row_stat of a fully skipped row != 0").c_str(), 1);
    for (int64_t j = 0; j < m0; ++j)
      if (sum && !col_live[j] && o.col_stat[j] != Acc(0))
        fail((t + "col_stat of a fully skipped column != 0").c_str(), 1);
  };
  auto check_grads = [&](const char* tag, const Out& o, const Grads& e) {
    const std::string t = tag;
    const double errs[] = {rel_err(dbl(o.dx, n * K), e.dx), rel_err(dbl(o.dy, m * K), e.dy),
                           rel_err(dbl(o.da, n * R), e.da), rel_err(dbl(o.db, m * R), e.db),
                           rel_err(dbl(o.dth, 3), e.dth)};
    const char* names[] = {"dx", "dy", "d_alpha", "d_beta", "d_theta"};
    for (int q = 0; q < 5; ++q)
      if (!(errs[q] <= tol)) fail((t + names[q]).c_str(), errs[q]);
    if (to_double(o.dx[n * K]) != 7 || to_double(o.dy[m * K]) != 7 || o.da[n * R] != Acc(7) ||
        o.db[m * R] != Acc(7))
      fail((t + "gradient written past the end").c_str(), 1);
    // Fully skipped rows / columns: gradient exactly zero (never NaN, never a stray term).
    for (int64_t i = 0; i < n; ++i) {
      if (row_live[i]) continue;
      bool zero = true;
      for (int64_t k = 0; k < K; ++k) zero = zero && to_double(o.dx[i * K + k]) == 0.0;
      for (int t2 = 0; t2 < R; ++t2) zero = zero && o.da[i * R + t2] == Acc(0);
      if (!zero) fail((t + "dx / d_alpha of a fully skipped row").c_str(), 1);
    }
    for (int64_t j = 0; j < m; ++j) {
      if (col_live[j]) continue;
      bool zero = true;
      for (int64_t k = 0; k < K; ++k) zero = zero && to_double(o.dy[j * K + k]) == 0.0;
      for (int t2 = 0; t2 < R; ++t2) zero = zero && o.db[j * R + t2] == Acc(0);
      if (!zero) fail((t + "dy / d_beta of a fully skipped column").c_str(), 1);
    }
  };

  Out fwd = make_out();
  if (tile_forward(pb, fwd.row_stat.data(), fwd.col_stat.data(), nullptr) != cudaSuccess)
    fail("tile_forward status", INFINITY);
  check_stats("", fwd);

  // The backward gets the float64 stats rounded to Acc, so that it is checked on its own.
  std::vector<Acc> rsa(rs.begin(), rs.end()), csa(cst.begin(), cst.end());
  rsa.push_back(0); csa.push_back(0);
  Out bwd = make_out();
  poison_workspace();
  if (tile_backward(pb, rsa.data(), csa.data(), g_row.data(), g_col.data(), bwd.grads(), wsp,
                    nullptr) != cudaSuccess)
    fail("tile_backward status", INFINITY);
  check_grads("", bwd, reference_grads(g_row, g_col));

  // One-pass forward + gradient (g_row = 1, g_col = 0): pair_sum only, lse / masked_sum
  // refused.
  Out fg = make_out();
  poison_workspace();
  const cudaError_t st = tile_forward_grad(pb, fg.row_stat.data(), fg.col_stat.data(),
                                           fg.grads(), wsp, nullptr);
  if (!sum) {
    if (st != cudaErrorNotSupported) fail("tile_forward_grad not refused", INFINITY);
    return failures;
  }
  if (st != cudaSuccess) fail("tile_forward_grad status", INFINITY);
  check_stats("fwd_grad ", fg);
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(&fg.row_stat[i], &fwd.row_stat[i], sizeof(Acc)) != 0) {
      fail("fwd_grad row_stat not bitwise tile_forward's", 1);
      break;
    }
  for (int64_t j = 0; j < m0; ++j)
    if (std::memcmp(&fg.col_stat[j], &fwd.col_stat[j], sizeof(Acc)) != 0) {
      fail("fwd_grad col_stat not bitwise tile_forward's", 1);
      break;
    }
  check_grads("fwd_grad ", fg,
              reference_grads(std::vector<double>(n, 1.0), std::vector<double>(m0, 0.0)));
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
    {"targets_one_row", 1, 67, 5, kRelTargets, 0, 0, -1},
    {"labels_large_logits", 41, 29, 6, kRelLabels, kFlagSkipSelf, 2, 20, false, false, 30.0},
};
const Case kPlainCases[] = {
    {"none", 70, 130, 37, kRelNone, 0, 0, -1},
    {"none_rowonly", 130, 70, 37, kRelNone, 0, 0, 41},
    {"none_tiny", 1, 5, 3, kRelNone, 0, 0, -1},
    {"none_k0", 9, 9, 0, kRelNone, 0, 0, -1},
    {"none_no_rows", 0, 5, 3, kRelNone, 0, 0, -1},
    {"none_no_cols", 5, 0, 3, kRelNone, 0, 0, -1},
};

template <class T, int KIND>
int run_kind(int stat, double tol, bool relations, std::mt19937_64& rng) {
  int f = 0;
  for (const Case& c : kPlainCases) f += run_case<T, KIND>(c, stat, tol, rng);
  if (relations)
    for (const Case& c : kRelationCases) f += run_case<T, KIND>(c, stat, tol, rng);
  return f;
}

// Every kind sees the plain cases; the relation cases run on every kind for fp64 / fp32 and on
// two kinds for the 16-bit types (the roles do not depend on the dtype; the rounding does).
template <class T>
int run_dtype(int stat, double tol, bool all_relations, std::mt19937_64& rng) {
  int f = 0;
  f += run_kind<T, kDot>(stat, tol, true, rng);
  f += run_kind<T, kSqEuclidean>(stat, tol, all_relations, rng);
  f += run_kind<T, kEuclidean>(stat, tol, all_relations, rng);
  f += run_kind<T, kHyperbolic>(stat, tol, true, rng);
  f += run_kind<T, kCosine>(stat, tol, all_relations, rng);
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
  // tile_forward_grad: invalid problems as above, and a stat without a pair-local G.
  std::vector<double> out(8);
  TileGrads g{out.data(), out.data(), out.data(), out.data(), out.data()};
  for (int stat : {int(kStatLse), int(kStatMaskedSum)}) {
    pb = base; pb.stat = stat;
    if (tile_forward_grad(pb, out.data(), out.data(), g, out.data(), nullptr) !=
        cudaErrorNotSupported) {
      std::printf("FAIL: tile_forward_grad of %s was not refused\n", stat_name(stat));
      ++f;
    }
  }
  pb = base; pb.stat = kNumStats;
  if (tile_forward_grad(pb, out.data(), out.data(), g, out.data(), nullptr) !=
      cudaErrorInvalidValue) {
    std::printf("FAIL: tile_forward_grad of an unknown stat was not refused\n");
    ++f;
  }
  if (tile_stat_local_grad(kStatLse) || !tile_stat_local_grad(kStatPairSum) ||
      tile_stat_local_grad(kStatMaskedSum) || tile_stat_local_grad(kNumStats)) {
    std::printf("FAIL: tile_stat_local_grad\n");
    ++f;
  }
  return f;
}

// ./emulate op IN OUT. IN (written by tests/test_cuda_backend.py, little-endian):
//   int64 header[12] = {kOpMagic, dtype (DType), kind, stat, relation, flags, diag_offset,
//                       cols_both, n, m, k, number of relation tensors}
//   int64 lengths of the relation tensors; double kappa
//   x [n, k], y [m, k] (input dtype; 16-bit types as their raw bits), alpha [n, r], beta [m, r],
//   theta [3] (compute dtype), the relation tensors (int64), g_row [n * w], g_col [cols_both * w]
//   (compute dtype; w = kStatStateWidth[stat], r = num_row_scalars(kind))
// OUT: int64 status[3] = cudaError_t of tile_forward, tile_backward (fed the forward's stats),
//   tile_forward_grad; then row_stat [n * w], col_stat [cols_both * w], and tile_backward's
//   dx [n, k], dy [m, k], d_alpha [n, r], d_beta [m, r], d_theta [3]; then, when
//   tile_forward_grad succeeded, its row_stat, col_stat, dx, dy, d_alpha, d_beta, d_theta.
constexpr int64_t kOpMagic = 0x464e4345;  // "ECNF"

int run_op_file(const char* in_path, const char* out_path) {
  FILE* in = std::fopen(in_path, "rb");
  if (!in) { std::printf("op: cannot open %s\n", in_path); return 2; }
  bool ok = true;
  auto read = [&](void* p, size_t bytes) {
    ok = ok && (bytes == 0 || std::fread(p, 1, bytes, in) == bytes);
  };
  int64_t h[12] = {};
  read(h, sizeof(h));
  if (!ok || h[0] != kOpMagic || h[1] < 0 || h[1] > 3 || h[2] < 0 || h[2] >= kNumEpilogueKinds ||
      h[3] < 0 || h[3] >= kNumStats || h[11] < 0 || h[11] > 6) {
    std::printf("op: bad header in %s\n", in_path);
    return 2;
  }
  TileProblem pb;
  pb.dtype = static_cast<DType>(h[1]);
  pb.kind = int(h[2]); pb.stat = int(h[3]); pb.relation = int(h[4]); pb.flags = h[5];
  pb.diag_offset = h[6]; pb.cols_both = h[7]; pb.n = h[8]; pb.m = h[9]; pb.k = h[10];
  const int64_t n = pb.n, m = pb.m, K = pb.k, m0 = pb.cols_both;
  const int64_t w = kStatStateWidth[pb.stat], r = num_row_scalars(pb.kind);
  const size_t es = pb.dtype == DType::kFloat64 ? 8 : pb.dtype == DType::kFloat32 ? 4 : 2;
  const size_t as = pb.dtype == DType::kFloat64 ? 8 : 4;
  std::vector<int64_t> lens(h[11]);
  read(lens.data(), lens.size() * sizeof(int64_t));
  read(&pb.kappa, sizeof(double));
  auto blob = [&](size_t count, size_t elem) {
    std::vector<unsigned char> b(count * elem + 8);
    read(b.data(), count * elem);
    return b;
  };
  auto x = blob(n * K, es), y = blob(m * K, es), a = blob(n * r, as), b = blob(m * r, as);
  auto theta = blob(3, as);
  std::vector<std::vector<int64_t>> rel(lens.size());
  for (size_t t = 0; t < lens.size(); ++t) {
    rel[t].resize(lens[t] + 1);
    read(rel[t].data(), lens[t] * sizeof(int64_t));
  }
  auto g_row = blob(n * w, as), g_col = blob(m0 * w, as);
  std::fclose(in);
  if (!ok) { std::printf("op: %s is too short\n", in_path); return 2; }
  pb.x = x.data(); pb.y = y.data(); pb.alpha = a.data(); pb.beta = b.data();
  pb.theta = theta.data();
  RelationIndex& ix = pb.index;
  auto tensor = [&](size_t t) { return t < rel.size() ? rel[t].data() : nullptr; };
  switch (pb.relation) {
    case kRelTargets: ix.targets = tensor(0); break;
    case kRelLabels: ix.row_labels = tensor(0); ix.col_labels = tensor(1); break;
    case kRelCsr:
      ix.indptr = tensor(0); ix.indices = tensor(1); ix.roles = tensor(2);
      ix.t_indptr = tensor(3); ix.t_indices = tensor(4); ix.t_roles = tensor(5);
      ix.nnz = lens.size() > 1 ? lens[1] : 0;
      break;
    default: break;
  }
  struct Out {
    std::vector<unsigned char> row, col, dx, dy, da, db, dth;
  };
  auto make_out = [&] {
    auto z = [](size_t bytes) { return std::vector<unsigned char>(bytes + 8, 0x7f); };
    return Out{z(n * w * as), z(m0 * w * as), z(n * K * es), z(m * K * es), z(n * r * as),
               z(m * r * as), z(3 * as)};
  };
  auto grads = [](Out& o) {
    return TileGrads{o.dx.data(), o.dy.data(), o.da.data(), o.db.data(), o.dth.data()};
  };
  const size_t ws_bytes = tile_backward_workspace_bytes(pb);
  std::vector<unsigned char> ws(ws_bytes + 256);
  void* wsp = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
  Out fwd = make_out(), fg = make_out();
  int64_t status[3];
  status[0] = tile_forward(pb, fwd.row.data(), fwd.col.data(), nullptr);
  std::memset(wsp, 0x7f, ws_bytes);
  status[1] = tile_backward(pb, fwd.row.data(), fwd.col.data(), g_row.data(), g_col.data(),
                            grads(fwd), wsp, nullptr);
  std::memset(wsp, 0x7f, ws_bytes);
  status[2] = tile_forward_grad(pb, fg.row.data(), fg.col.data(), grads(fg), wsp, nullptr);
  FILE* out = std::fopen(out_path, "wb");
  if (!out) { std::printf("op: cannot write %s\n", out_path); return 2; }
  auto write = [&](const std::vector<unsigned char>& v) {
    ok = ok && (v.size() == 8 || std::fwrite(v.data(), 1, v.size() - 8, out) == v.size() - 8);
  };
  ok = std::fwrite(status, sizeof(status), 1, out) == 1;
  for (const Out* o : {&fwd, &fg}) {
    if (o == &fg && status[2] != cudaSuccess) break;
    for (const auto* v : {&o->row, &o->col, &o->dx, &o->dy, &o->da, &o->db, &o->dth}) write(*v);
  }
  ok = std::fclose(out) == 0 && ok;
  if (!ok) { std::printf("op: writing %s failed\n", out_path); return 2; }
  return 0;
}

}  // namespace

// ./emulate [quick] [lse|pair_sum|masked_sum]...: quick runs fp64 only; stat names restrict
// the run to those stats. ./emulate op IN OUT: one problem from a file (run_op_file).
int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "op") return run_op_file(argv[2], argv[3]);
  bool quick = false;
  std::vector<int> stats;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "quick") quick = true;
    else if (arg == "lse") stats.push_back(kStatLse);
    else if (arg == "pair_sum") stats.push_back(kStatPairSum);
    else if (arg == "masked_sum") stats.push_back(kStatMaskedSum);
    else {
      std::printf("usage: %s [quick] [lse|pair_sum|masked_sum]... | op IN OUT\n", argv[0]);
      return 2;
    }
  }
  if (stats.empty()) stats = {kStatLse, kStatPairSum, kStatMaskedSum};
  int failures = check_refusals();
  for (int stat : stats) {
    std::mt19937_64 rng(1234 + stat);
    int f = run_dtype<double>(stat, 1e-10, true, rng);
    if (!quick) {
      f += run_dtype<float>(stat, 2e-4, true, rng);
      f += run_dtype<__nv_bfloat16>(stat, 2e-2, false, rng);
      f += run_dtype<__half>(stat, 5e-3, false, rng);
    }
    std::printf("%s: %d failure(s)\n", stat_name(stat), f);
    failures += f;
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}

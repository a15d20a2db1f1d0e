// Bindings of the family optimizers' functional steps (adagrad_step, rmsprop_step,
// adamax_step, nadam_step, radam_step, lion_step) and their hyperparameter checks.
#include "optim_family.hpp"

#include <cmath>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "optim_params.hpp"

namespace fusedops::bind {

namespace {

// Reads the hyperparameters of a group dict (keys the Python class has type-checked);
// absent keys leave the field at its default.
struct GroupReader {
  const py::dict& group;

  void real(const char* key, double& field) const {
    if (group.contains(key)) field = group[key].cast<double>();
  }
  void flag(const char* key, bool& field) const {
    if (group.contains(key)) field = group[key].cast<bool>();
  }
};

}  // namespace

void check_family_params(const char* fn, const FamilyParams& p) {
  if (p.step < 1) {
    throw py::value_error(std::string(fn) + ": step must be an int >= 1, got " +
                          std::to_string(p.step));
  }
  require_at_least(fn, "lr", p.lr, 0.0);
  require_at_least(fn, "weight_decay", p.weight_decay, 0.0);
  require_at_least(fn, "l1", p.l1, 0.0);
  require_positive(fn, "grad_scale", p.grad_scale);
  switch (p.kind) {
    case FamilyKind::adagrad:
      require_at_least(fn, "lr_decay", p.lr_decay, 0.0);
      require_at_least(fn, "eps", p.eps, 0.0);
      break;
    case FamilyKind::rmsprop:
      require_range(fn, "alpha", p.alpha, 0.0, 1.0, true);
      require_at_least(fn, "momentum", p.momentum, 0.0);
      require_at_least(fn, "eps", p.eps, 0.0);
      break;
    case FamilyKind::nadam:
      require_at_least(fn, "momentum_decay", p.momentum_decay, 0.0);
      require_range(fn, "mu_product", p.mu_product, 0.0, 1.0, true);
      [[fallthrough]];
    case FamilyKind::adamax:
    case FamilyKind::radam:
      require_at_least(fn, "eps", p.eps, 0.0);
      [[fallthrough]];
    case FamilyKind::lion:
      require_range(fn, "betas[0]", p.beta1, 0.0, 1.0, false);
      require_range(fn, "betas[1]", p.beta2, 0.0, 1.0, false);
      break;
    case FamilyKind::count:
      throw py::value_error(std::string(fn) + ": unknown optimizer kind");
  }
}

bool family_uses_state(const FamilyParams& p, int k) {
  switch (p.kind) {
    case FamilyKind::adagrad:
    case FamilyKind::lion:
      return k == 0;
    case FamilyKind::rmsprop:
      return k == 0 || (k == 1 && p.centered) || (k == 2 && p.momentum > 0.0);
    case FamilyKind::adamax:
    case FamilyKind::nadam:
    case FamilyKind::radam:
      return k <= 1;
    case FamilyKind::count:
      break;
  }
  return false;
}

FamilyParams family_params_from_group(const char* where, FamilyKind kind, const py::dict& group,
                                      long long step, double grad_scale) {
  FamilyParams p;
  p.kind = kind;
  p.step = step;
  p.grad_scale = grad_scale;
  const GroupReader read{group};
  read.real("lr", p.lr);
  read.real("beta1", p.beta1);
  read.real("beta2", p.beta2);
  read.real("eps", p.eps);
  read.real("weight_decay", p.weight_decay);
  read.real("l1", p.l1);
  read.real("lr_decay", p.lr_decay);
  read.real("alpha", p.alpha);
  read.real("momentum", p.momentum);
  read.real("momentum_decay", p.momentum_decay);
  read.real("mu_product", p.mu_product);
  read.flag("maximize", p.maximize);
  read.flag("decoupled_weight_decay", p.decoupled_weight_decay);
  read.flag("centered", p.centered);
  check_family_params(where, p);
  return p;
}

namespace {

struct StateArg {
  const char* name;
  py::handle obj;  // None: absent
};

// The mixed-precision arguments every step takes.
struct MixedArgs {
  py::handle param_copies, stochastic_rounding, seed;
};

// Checks params (written), grads (read), the state arguments the hyperparameters use
// (uses[k] for the k-th; written; the others are not read) and param_copies, against
// API.md's dtype table, per tensor.
StepArrays checked_arrays(const char* fn, const bool* uses, py::handle params, py::handle grads,
                          std::initializer_list<StateArg> states, py::handle param_copies) {
  std::vector<std::pair<const char*, py::handle>> used;
  int slot = 0;
  for (const StateArg& s : states) {
    if (uses[slot] && s.obj.is_none()) {
      throw py::value_error(std::string(fn) + ": " + s.name +
                            " is required with these hyperparameters");
    }
    used.emplace_back(s.name, uses[slot] ? s.obj : py::none());
    ++slot;
  }
  return check_step_arrays(fn, params, grads, used, param_copies);
}

Rounding checked_rounding_at(const char* fn, const MixedArgs& mixed, long long step) {
  Rounding r = checked_rounding(fn, mixed.stochastic_rounding, mixed.seed);
  r.step = static_cast<std::uint64_t>(step);
  return r;
}

void run(const char* fn, const FamilyParams& p, py::handle params, py::handle grads,
         std::initializer_list<StateArg> states, const MixedArgs& mixed) {
  check_family_params(fn, p);
  const Rounding rounding = checked_rounding_at(fn, mixed, p.step);
  const bool uses[3] = {family_uses_state(p, 0), family_uses_state(p, 1), family_uses_state(p, 2)};
  const StepArrays s = checked_arrays(fn, uses, params, grads, states, mixed.param_copies);
  Dtype dtype = Dtype::f32;
  CallVector<OptimTensor> single;
  const bool is_single = single_dtype(s.tensors, &dtype, &single);
  py::gil_scoped_release release;
  if (is_single) {
    family_step(dtype, &p, 1, single.data(), single.size());
  } else {
    family_step_mixed(&p, 1, s.tensors.data(), s.tensors.size(), rounding);
  }
}

FamilyParams base(FamilyKind kind, long long step, double lr, double weight_decay, double l1,
                  bool maximize, double grad_scale) {
  FamilyParams p;
  p.kind = kind;
  p.step = step;
  p.lr = lr;
  p.weight_decay = weight_decay;
  p.l1 = l1;
  p.maximize = maximize;
  p.grad_scale = grad_scale;
  return p;
}

using Betas = std::pair<double, double>;

std::vector<double> lamb_py(py::handle params, py::handle grads, py::handle exp_avgs,
                            py::handle exp_avg_sqs, long long step, double lr, Betas betas,
                            double eps, double weight_decay, bool bias_correction,
                            std::optional<double> trust_clip, py::handle exclude, double l1,
                            bool maximize, double grad_scale, py::handle param_copies,
                            py::handle stochastic_rounding, py::handle seed) {
  const char* fn = "lamb_step";
  LambParams p;
  p.step = step;
  p.lr = lr;
  p.beta1 = betas.first;
  p.beta2 = betas.second;
  p.eps = eps;
  p.weight_decay = weight_decay;
  p.bias_correction = bias_correction;
  if (trust_clip) {
    require_positive(fn, "trust_clip", *trust_clip);
    p.trust_clip = *trust_clip;
  }
  p.l1 = l1;
  p.maximize = maximize;
  p.grad_scale = grad_scale;
  check_lamb_params(fn, p);
  const Rounding rounding =
      checked_rounding_at(fn, {param_copies, stochastic_rounding, seed}, p.step);
  const bool uses[2] = {true, true};
  const StepArrays s = checked_arrays(fn, uses, params, grads,
                                      {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}},
                                      param_copies);
  const std::size_t count = s.tensors.size();
  const std::vector<unsigned char> excluded = exclusion_flags(fn, exclude, count);
  Dtype dtype = Dtype::f32;
  CallVector<OptimTensor> single;
  const bool is_single = single_dtype(s.tensors, &dtype, &single);
  std::vector<double> ratios(count);
  py::gil_scoped_release release;
  if (is_single) {
    lamb_step(dtype, &p, 1, single.data(), excluded.data(), count, ratios.data());
  } else {
    lamb_step_mixed(&p, 1, s.tensors.data(), excluded.data(), count, rounding, ratios.data());
  }
  return ratios;
}

std::vector<double> lars_py(py::handle params, py::handle grads, py::handle momentum_buffers,
                            double lr, double momentum, double dampening, double weight_decay,
                            double eta, double eps, bool nesterov, bool trust_clip,
                            bool first_step, py::handle exclude, double l1, bool maximize,
                            double grad_scale, long long step, py::handle param_copies,
                            py::handle stochastic_rounding, py::handle seed) {
  const char* fn = "lars_step";
  LarsParams p;
  p.lr = lr;
  p.momentum = momentum;
  p.dampening = dampening;
  p.weight_decay = weight_decay;
  p.eta = eta;
  p.eps = eps;
  p.nesterov = nesterov;
  p.trust_clip = trust_clip;
  p.first_step = first_step;
  p.l1 = l1;
  p.maximize = maximize;
  p.grad_scale = grad_scale;
  check_lars_params(fn, p);
  if (step < 1) {
    throw py::value_error(std::string(fn) + ": step must be an int >= 1, got " +
                          std::to_string(step));
  }
  const Rounding rounding = checked_rounding_at(fn, {param_copies, stochastic_rounding, seed}, step);
  const bool uses[1] = {momentum != 0.0};
  const StepArrays s = checked_arrays(fn, uses, params, grads,
                                      {{"momentum_buffers", momentum_buffers}}, param_copies);
  const std::size_t count = s.tensors.size();
  const std::vector<unsigned char> excluded = exclusion_flags(fn, exclude, count);
  Dtype dtype = Dtype::f32;
  CallVector<OptimTensor> single;
  const bool is_single = single_dtype(s.tensors, &dtype, &single);
  std::vector<double> ratios(count);
  py::gil_scoped_release release;
  if (is_single) {
    lars_step(dtype, &p, 1, single.data(), excluded.data(), count, ratios.data());
  } else {
    lars_step_mixed(&p, 1, s.tensors.data(), excluded.data(), count, rounding, ratios.data());
  }
  return ratios;
}

}  // namespace

void check_lamb_params(const char* fn, const LambParams& p) {
  if (p.step < 1) {
    throw py::value_error(std::string(fn) + ": step must be an int >= 1, got " +
                          std::to_string(p.step));
  }
  require_at_least(fn, "lr", p.lr, 0.0);
  require_range(fn, "betas[0]", p.beta1, 0.0, 1.0, false);
  require_range(fn, "betas[1]", p.beta2, 0.0, 1.0, false);
  require_at_least(fn, "eps", p.eps, 0.0);
  require_at_least(fn, "weight_decay", p.weight_decay, 0.0);
  require_at_least(fn, "l1", p.l1, 0.0);
  require_at_least(fn, "trust_clip", p.trust_clip, 0.0);
  require_positive(fn, "grad_scale", p.grad_scale);
}

void check_lars_params(const char* fn, const LarsParams& p) {
  require_at_least(fn, "lr", p.lr, 0.0);
  require_at_least(fn, "momentum", p.momentum, 0.0);
  require_range(fn, "dampening", p.dampening, 0.0, 1.0, true);
  require_at_least(fn, "weight_decay", p.weight_decay, 0.0);
  require_positive(fn, "eta", p.eta);
  require_at_least(fn, "eps", p.eps, 0.0);
  require_at_least(fn, "l1", p.l1, 0.0);
  require_positive(fn, "grad_scale", p.grad_scale);
  if (p.nesterov && (p.momentum <= 0.0 || p.dampening != 0.0)) {
    throw py::value_error(std::string(fn) +
                          ": nesterov=True requires momentum > 0 and dampening == 0");
  }
}

LambParams lamb_params_from_group(const char* where, const py::dict& group, long long step,
                                  double grad_scale) {
  LambParams p;
  p.step = step;
  p.grad_scale = grad_scale;
  const GroupReader read{group};
  read.real("lr", p.lr);
  read.real("beta1", p.beta1);
  read.real("beta2", p.beta2);
  read.real("eps", p.eps);
  read.real("weight_decay", p.weight_decay);
  read.real("l1", p.l1);
  read.real("trust_clip", p.trust_clip);
  read.flag("bias_correction", p.bias_correction);
  read.flag("maximize", p.maximize);
  check_lamb_params(where, p);
  return p;
}

LarsParams lars_params_from_group(const char* where, const py::dict& group, double grad_scale,
                                  bool first_step) {
  LarsParams p;
  p.grad_scale = grad_scale;
  p.first_step = first_step;
  const GroupReader read{group};
  read.real("lr", p.lr);
  read.real("momentum", p.momentum);
  read.real("dampening", p.dampening);
  read.real("weight_decay", p.weight_decay);
  read.real("eta", p.eta);
  read.real("eps", p.eps);
  read.real("l1", p.l1);
  read.flag("nesterov", p.nesterov);
  read.flag("maximize", p.maximize);
  read.flag("trust_clip", p.trust_clip);
  check_lars_params(where, p);
  return p;
}

std::vector<unsigned char> exclusion_flags(const char* fn, py::handle exclude, std::size_t count) {
  std::vector<unsigned char> flags(count, 0);
  if (exclude.is_none()) return flags;
  if (!py::isinstance<py::sequence>(exclude) || py::isinstance<py::str>(exclude)) {
    throw py::type_error(std::string(fn) + ": exclude must be None or a sequence of bools, got " +
                         py::str(py::type::handle_of(exclude).attr("__name__")).cast<std::string>());
  }
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(exclude);
  if (seq.size() != count) {
    throw py::value_error(std::string(fn) + ": exclude has " + std::to_string(seq.size()) +
                          " flags but there are " + std::to_string(count) + " params");
  }
  for (std::size_t i = 0; i < count; ++i) {
    const py::handle item = seq[i];
    if (!py::isinstance<py::bool_>(item)) {
      throw py::type_error(std::string(fn) + ": exclude[" + std::to_string(i) +
                           "] must be a bool");
    }
    flags[i] = item.cast<bool>() ? 1 : 0;
  }
  return flags;
}

void register_optim_family(py::module_& m) {
  m.def(
      "adagrad_step",
      [](py::handle params, py::handle grads, py::handle state_sums, long long step, double lr,
         double lr_decay, double weight_decay, double eps, double l1, bool maximize,
         double grad_scale, py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
        FamilyParams p = base(FamilyKind::adagrad, step, lr, weight_decay, l1, maximize, grad_scale);
        p.lr_decay = lr_decay;
        p.eps = eps;
        run("adagrad_step", p, params, grads, {{"state_sums", state_sums}},
            {param_copies, stochastic_rounding, seed});
      },
      py::arg("params"), py::arg("grads"), py::arg("state_sums"), py::kw_only(), py::arg("step"),
      py::arg("lr") = 1e-2, py::arg("lr_decay") = 0.0, py::arg("weight_decay") = 0.0,
      py::arg("eps") = 1e-10, py::arg("l1") = 0.0, py::arg("maximize") = false,
      py::arg("grad_scale") = 1.0, py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
      py::arg("seed") = 0,
      "One fused Adagrad step (torch.optim.Adagrad), in place.");

  m.def(
      "rmsprop_step",
      [](py::handle params, py::handle grads, py::handle square_avgs, py::handle grad_avgs,
         py::handle momentum_buffers, double lr, double alpha, double eps, double weight_decay,
         double momentum, bool centered, double l1, bool maximize, double grad_scale,
         long long step, py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
        FamilyParams p = base(FamilyKind::rmsprop, step, lr, weight_decay, l1, maximize, grad_scale);
        p.alpha = alpha;
        p.eps = eps;
        p.momentum = momentum;
        p.centered = centered;
        run("rmsprop_step", p, params, grads,
            {{"square_avgs", square_avgs}, {"grad_avgs", grad_avgs},
             {"momentum_buffers", momentum_buffers}},
            {param_copies, stochastic_rounding, seed});
      },
      py::arg("params"), py::arg("grads"), py::arg("square_avgs"),
      py::arg("grad_avgs") = py::none(), py::arg("momentum_buffers") = py::none(), py::kw_only(),
      py::arg("lr") = 1e-2, py::arg("alpha") = 0.99, py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 0.0, py::arg("momentum") = 0.0, py::arg("centered") = false,
      py::arg("l1") = 0.0, py::arg("maximize") = false, py::arg("grad_scale") = 1.0,
      py::arg("step") = 1, py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
      py::arg("seed") = 0,
      "One fused RMSprop step (torch.optim.RMSprop), in place. grad_avgs is required when "
      "centered=True, momentum_buffers when momentum > 0. step (>= 1) only keys stochastic "
      "rounding: pass the step count for new random bits at each step.");

  m.def(
      "adamax_step",
      [](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_infs,
         long long step, double lr, Betas betas, double eps, double weight_decay, double l1,
         bool maximize, double grad_scale, py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
        FamilyParams p = base(FamilyKind::adamax, step, lr, weight_decay, l1, maximize, grad_scale);
        p.beta1 = betas.first;
        p.beta2 = betas.second;
        p.eps = eps;
        run("adamax_step", p, params, grads, {{"exp_avgs", exp_avgs}, {"exp_infs", exp_infs}},
            {param_copies, stochastic_rounding, seed});
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_infs"),
      py::kw_only(), py::arg("step"), py::arg("lr") = 2e-3,
      py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 0.0, py::arg("l1") = 0.0, py::arg("maximize") = false,
      py::arg("grad_scale") = 1.0, py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
      py::arg("seed") = 0,
      "One fused Adamax step (torch.optim.Adamax), in place.");

  m.def(
      "nadam_step",
      [](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs,
         long long step, std::optional<double> mu_product, double lr, Betas betas, double eps,
         double weight_decay, double momentum_decay, bool decoupled_weight_decay, double l1,
         bool maximize, double grad_scale, py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
        FamilyParams p = base(FamilyKind::nadam, step, lr, weight_decay, l1, maximize, grad_scale);
        p.beta1 = betas.first;
        p.beta2 = betas.second;
        p.eps = eps;
        p.momentum_decay = momentum_decay;
        p.decoupled_weight_decay = decoupled_weight_decay;
        if (mu_product) {
          p.mu_product = *mu_product;
        } else {
          check_family_params("nadam_step", p);  // step, betas and momentum_decay first
          for (long long t = 1; t < step; ++t) {
            p.mu_product *= nadam_mu(p.beta1, p.momentum_decay, t);
          }
        }
        run("nadam_step", p, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}},
            {param_copies, stochastic_rounding, seed});
        return p.mu_product * nadam_mu(p.beta1, p.momentum_decay, step);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
      py::kw_only(), py::arg("step"), py::arg("mu_product") = py::none(), py::arg("lr") = 2e-3,
      py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 0.0, py::arg("momentum_decay") = 4e-3,
      py::arg("decoupled_weight_decay") = false, py::arg("l1") = 0.0,
      py::arg("maximize") = false, py::arg("grad_scale") = 1.0, py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
      py::arg("seed") = 0,
      "One fused NAdam step (torch.optim.NAdam), in place. mu_product is the product of "
      "mu_t over the steps before this one (torch's state['mu_product']); None computes it "
      "for constant betas[0] and momentum_decay. Returns the product including this step.");

  m.def(
      "radam_step",
      [](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs,
         long long step, double lr, Betas betas, double eps, double weight_decay,
         bool decoupled_weight_decay, double l1, bool maximize, double grad_scale,
         py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
        FamilyParams p = base(FamilyKind::radam, step, lr, weight_decay, l1, maximize, grad_scale);
        p.beta1 = betas.first;
        p.beta2 = betas.second;
        p.eps = eps;
        p.decoupled_weight_decay = decoupled_weight_decay;
        run("radam_step", p, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}},
            {param_copies, stochastic_rounding, seed});
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
      py::kw_only(), py::arg("step"), py::arg("lr") = 1e-3,
      py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 0.0, py::arg("decoupled_weight_decay") = false,
      py::arg("l1") = 0.0, py::arg("maximize") = false, py::arg("grad_scale") = 1.0,
      py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
      py::arg("seed") = 0,
      "One fused RAdam step (torch.optim.RAdam, rectified when rho_t > 5), in place.");

  m.def(
      "lion_step",
      [](py::handle params, py::handle grads, py::handle exp_avgs, double lr, Betas betas,
         double weight_decay, double l1, bool maximize, double grad_scale, long long step,
         py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
        FamilyParams p = base(FamilyKind::lion, step, lr, weight_decay, l1, maximize, grad_scale);
        p.beta1 = betas.first;
        p.beta2 = betas.second;
        run("lion_step", p, params, grads, {{"exp_avgs", exp_avgs}},
            {param_copies, stochastic_rounding, seed});
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::kw_only(),
      py::arg("lr") = 1e-4, py::arg("betas") = std::make_pair(0.9, 0.99),
      py::arg("weight_decay") = 0.0, py::arg("l1") = 0.0, py::arg("maximize") = false,
      py::arg("grad_scale") = 1.0, py::arg("step") = 1, py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
      py::arg("seed") = 0,
      "One fused Lion step (Chen et al. 2023; decoupled weight decay), in place. step (>= 1) "
      "only keys stochastic rounding: pass the step count for new random bits at each step.");

  m.def("lamb_step", &lamb_py, py::arg("params"), py::arg("grads"), py::arg("exp_avgs"),
        py::arg("exp_avg_sqs"), py::kw_only(), py::arg("step"), py::arg("lr") = 1e-3,
        py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-6,
        py::arg("weight_decay") = 0.0, py::arg("bias_correction") = true,
        py::arg("trust_clip") = py::none(), py::arg("exclude") = py::none(), py::arg("l1") = 0.0,
        py::arg("maximize") = false, py::arg("grad_scale") = 1.0,
        py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
        py::arg("seed") = 0,
        "One fused LAMB step (You et al. 2019), in place; returns each tensor's trust ratio.");
  m.def("lars_step", &lars_py, py::arg("params"), py::arg("grads"),
        py::arg("momentum_buffers") = py::none(), py::kw_only(), py::arg("lr"),
        py::arg("momentum") = 0.9, py::arg("dampening") = 0.0, py::arg("weight_decay") = 0.0,
        py::arg("eta") = 1e-3, py::arg("eps") = 1e-8, py::arg("nesterov") = false,
        py::arg("trust_clip") = false, py::arg("first_step") = false,
        py::arg("exclude") = py::none(), py::arg("l1") = 0.0, py::arg("maximize") = false,
        py::arg("grad_scale") = 1.0, py::arg("step") = 1, py::arg("param_copies") = py::none(),
        py::arg("stochastic_rounding") = false, py::arg("seed") = 0,
        "One fused LARS step (You et al. 2017), in place; returns each tensor's trust ratio. "
        "step (>= 1) only keys stochastic rounding: pass the step count.");
  m.def(
      "_check_lamb_group",
      [](const std::string& where, const py::dict& group) {
        lamb_params_from_group(where.c_str(), group, 1, 1.0);
      },
      py::arg("where"), py::arg("group"), "Raises ValueError for out-of-range LAMB hyperparameters.");
  m.def(
      "_check_lars_group",
      [](const std::string& where, const py::dict& group) {
        lars_params_from_group(where.c_str(), group, 1.0, false);
      },
      py::arg("where"), py::arg("group"), "Raises ValueError for out-of-range LARS hyperparameters.");
  m.def(
      "_check_family_group",
      [](const std::string& where, int kind, const py::dict& group) {
        if (kind < 0 || kind >= static_cast<int>(FamilyKind::count)) {
          throw py::value_error(where + ": unknown optimizer kind " + std::to_string(kind));
        }
        family_params_from_group(where.c_str(), static_cast<FamilyKind>(kind), group, 1, 1.0);
      },
      py::arg("where"), py::arg("kind"), py::arg("group"),
      "Raises ValueError for out-of-range hyperparameters of a family optimizer's group.");
  m.attr("_family_kinds") = py::dict(
      py::arg("adagrad") = static_cast<int>(FamilyKind::adagrad),
      py::arg("rmsprop") = static_cast<int>(FamilyKind::rmsprop),
      py::arg("adamax") = static_cast<int>(FamilyKind::adamax),
      py::arg("nadam") = static_cast<int>(FamilyKind::nadam),
      py::arg("radam") = static_cast<int>(FamilyKind::radam),
      py::arg("lion") = static_cast<int>(FamilyKind::lion));
}

}  // namespace fusedops::bind

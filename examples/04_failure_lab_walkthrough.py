"""Three classic backprop failures, made to happen, named by the doctor, and repaired.

    python examples/04_failure_lab_walkthrough.py            # a few seconds
    python examples/04_failure_lab_walkthrough.py --plots    # also writes lab_<name>.png here

Every scenario of ``bpnet.lab`` trains a broken configuration and its repair
with the same code, data, seed and step budget, then checks three things:
(a) the failure happened (its defining number crossed a threshold), (b) the
doctor named it, (c) the remedy met its bar.  Below we open up three of them
and print the numbers that tell the story.  ``bpnet lab list`` shows all.
"""
import sys

import bpnet.lab as lab

PLOTS = "--plots" in sys.argv


def header(text):
    print("\n" + "=" * 78 + "\n" + text + "\n" + "=" * 78)


def show(result):
    if PLOTS:
        from bpnet.lab.plot import plot_result
        plot_result(result, f"lab_{result.scenario}.png")
        print(f"(plot: lab_{result.scenario}.png)")


# --------------------------------------------------------------------------- 1. vanishing gradients
header("1. deep_sigmoid_vanishing: 12 sigmoid layers, and the first one never learns")
results = []
r = lab.run("deep_sigmoid_vanishing")
results.append(r)
steps = r.broken.history.steps
first = steps[0]
layers = sorted((k for k in first if k.startswith("grad_norm/") and k[10:].isdigit()), key=lambda k: int(k[10:]))
print("gradient norm per Dense layer at the first step (input side first):")
for k in sorted(set(layers[::2] + [layers[-1]]), key=layers.index):
    print(f"  layer {k[10:]:>2}: {first[k]:.2e}")
print(f"Each sigmoid multiplies the gradient by at most σ' = 1/4 on the way back, so the first layer\n"
      f"gets {r.value:.1e}: the network stays at chance (validation accuracy "
      f"{r.broken.metrics['val_accuracy']:.2f}).")
print(f"doctor: {r.finding().message}")
print(f"ReLU + He init: first-layer gradient {r.repaired.metrics['grad_norm_first_layer']:.2f}, "
      f"validation accuracy {r.repaired.metrics['val_accuracy']:.3f}.")
for name, v in r.variants.items():
    print(f"{name}: first-layer gradient {v['grad_norm_first_layer']:.2f}, "
          f"validation accuracy {v['val_accuracy']:.3f}.")
show(r)

# --------------------------------------------------------------------------- 2. NaN in the data
header("2. nan_in_data: 14 NaN pixels in 1437 images, and every weight turns NaN")
r = lab.run("nan_in_data")
results.append(r)
print(f"The loss is finite for {r.value:.0f} steps, until the first batch that holds a NaN row:")
print("  " + ", ".join(f"{v:.3f}" for v in r.broken.step_loss))
print(f"Replayed under detect_anomaly, the first NaN is found at {r.broken.anomaly.phase} of layer "
      f"{r.broken.anomaly.layer_path} ({r.broken.anomaly.layer_class}); data_to_blame = "
      f"{r.broken.anomaly.data_to_blame}.")
f = r.finding()
print(f"check_data lists the rows: {f.evidence['rows']}")
print(f"Dropping exactly those rows ({r.repaired.metrics['rows_used']} left): validation accuracy "
      f"{r.repaired.metrics['val_accuracy']:.3f}.")
show(r)

# --------------------------------------------------------------------------- 3. a wrong derivative
header("3. wrong_derivative: a hand-written sigmoid whose backward uses σ' = σ")
r = lab.run("wrong_derivative")
results.append(r)
print(f"Training does not crash: validation accuracy {r.broken.metrics['val_accuracy']:.3f} "
      f"(correct layer: {r.repaired.metrics['val_accuracy']:.3f}). Only a gradient check shows it.")
f = r.finding()
ev = f.evidence
print(f"check_gradients checks each layer on its real input and names {f.where} ({ev['class']}):")
print(f"  d/d{ev['tensor']} relative error {ev['rel_error']:.2f}; worst element {tuple(ev['worst_index'])}: "
      f"analytic {ev['analytic']:.4g} vs numeric {ev['numeric']:.4g}")
print("  (the analytic value is the numeric one divided by 1 - σ(z): here σ(z) is close to 1)")
print("the per-layer report:\n" + "\n".join("  " + line for line in ev["report"].splitlines()))
show(r)

header("All three checks")
print(lab.summary_table(results))

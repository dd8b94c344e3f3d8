"""XOR by hand: the training loop written out, every gradient in plain sight.

XOR is the classic problem a single linear layer cannot solve; one hidden
layer can.  Instead of ``model.fit`` we run forward, loss, backward and the
update ourselves and print the gradients the backward pass produced.

    python examples/01_xor_by_hand.py
"""
import numpy as np

from bpnet import SGD, BCEWithLogits, Dense, Sequential, Tanh, clip_grad_norm
from bpnet.data import xor

X, y = xor()                                   # the four corners, labels 0 1 1 0
model = Sequential([Dense(8, init="xavier_uniform"), Tanh(), Dense(1)], seed=1, dtype="float64",
                   backend="numpy")
loss_fn = BCEWithLogits()
model.build(X.shape[1:])
opt = SGD(lr=0.5, momentum=0.9).bind(model)

for step in range(301):
    logits = model.forward(X, training=True)          # (4, 1)
    loss = loss_fn.forward(logits, y)                  # mean binary cross-entropy
    d_logits = loss_fn.backward()                      # ∂loss/∂logits = (σ(z) - y) / 4
    model.backward(d_logits)                           # fills every layer's .grads
    norm = clip_grad_norm(model, max_norm=5.0)         # global gradient norm (before clipping)
    opt.step()                                         # p ← p - lr · v
    if step % 100 == 0:
        print(f"step {step:3d}  loss {loss:.4f}  grad norm {norm:.4f}")
        for name, g in model.gradients().items():
            print(f"    d loss / d {name:<4} shape {str(g.shape):<7} |g| = {np.linalg.norm(g):.5f}")

probs = 1 / (1 + np.exp(-model.predict(X)))
print("inputs  ", X.tolist())
print("targets ", y.tolist())
print("P(y=1)  ", np.round(probs.ravel(), 3).tolist())
assert ((probs.ravel() > 0.5) == (y == 1)).all(), "XOR not learned"

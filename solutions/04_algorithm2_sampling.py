"""Solutions of notebook 04's exercises."""


def predict_x0(x_t, t, eps, alpha_bar):
    a = alpha_bar[t].view(-1, 1, 1, 1)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def ddpm_step(x_t, t, eps, z, beta, alpha_bar, variance):
    alpha_t = 1 - beta[t]
    mean = (x_t - beta[t] / (1 - alpha_bar[t]).sqrt() * eps) / alpha_t.sqrt()
    if t == 1:  # line 3: no noise in the last step
        return mean
    sigma2 = beta[t] if variance == "large" else (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * beta[t]
    return mean + sigma2.sqrt() * z


def ddim_step(x_t, t, t_prev, eps, alpha_bar):
    x0_hat = (x_t - (1 - alpha_bar[t]).sqrt() * eps) / alpha_bar[t].sqrt()
    return alpha_bar[t_prev].sqrt() * x0_hat + (1 - alpha_bar[t_prev]).sqrt() * eps

// Login: trades the admin token for an HttpOnly session cookie, then reloads into the dashboard.
const form = document.getElementById('login');
const error = document.getElementById('error');
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  error.hidden = true;
  const token = document.getElementById('token').value;
  try {
    const res = await fetch('/api/session', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-mailhook-csrf': '1' },
      body: JSON.stringify({ token }),
      credentials: 'same-origin',
    });
    if (res.ok) {
      location.reload();
      return;
    }
    const body = await res.json().catch(() => ({}));
    error.textContent = body.message || `login failed (HTTP ${res.status})`;
  } catch (err) {
    error.textContent = `cannot reach mailhook: ${err.message}`;
  }
  error.hidden = false;
});

// The hosted checkout page's script (services/gateway/checkout/pages.py).
//
// The card goes to the processor's tokenize endpoint only (data-tokenize-url, the one
// other origin the page's Content-Security-Policy allows); Accrue's gateway receives the
// token and the render's nonce. Messages are set with textContent, never as markup.
(function () {
  "use strict";

  var POLL_EVERY_MS = 1500;
  var POLL_FOR_MS = 5 * 60 * 1000;

  function byId(id) {
    return document.getElementById(id);
  }

  function digits(text) {
    return (text || "").replace(/\D+/g, "");
  }

  function embedded() {
    try {
      return window.parent !== window;
    } catch (e) {
      return true;
    }
  }

  // An embedding page learns the outcome (Paygentic: payment_success / payment_error).
  function tellParent(type, extra) {
    if (!embedded()) {
      return;
    }
    var message = { type: type };
    Object.keys(extra || {}).forEach(function (key) {
      message[key] = extra[key];
    });
    window.parent.postMessage(message, "*");
  }

  async function postJson(url, body, sameOrigin) {
    var response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
      credentials: sameOrigin ? "same-origin" : "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
    var data = {};
    try {
      data = (await response.json()) || {};
    } catch (e) {
      data = {};
    }
    return { ok: response.ok, status: response.status, data: data };
  }

  async function getJson(url) {
    var response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
    var data = {};
    try {
      data = (await response.json()) || {};
    } catch (e) {
      data = {};
    }
    return { ok: response.ok, status: response.status, data: data };
  }

  function sleep(ms) {
    return new Promise(function (resolve) {
      window.setTimeout(resolve, ms);
    });
  }

  // MM/YY or MM/YYYY -> {month, year}; null when it is no date.
  function parseExpiry(text) {
    var d = digits(text);
    if (d.length !== 4 && d.length !== 6) {
      return null;
    }
    var month = parseInt(d.slice(0, 2), 10);
    var year = d.length === 4 ? 2000 + parseInt(d.slice(2), 10) : parseInt(d.slice(2), 10);
    if (month < 1 || month > 12) {
      return null;
    }
    return { month: month, year: year };
  }

  // The page that shows a processing session: ask until it is decided, then show it.
  async function pollPage(url) {
    var until = Date.now() + POLL_FOR_MS;
    while (Date.now() < until) {
      await sleep(POLL_EVERY_MS);
      try {
        var answer = await getJson(url);
        if (answer.ok && answer.data.status && answer.data.status !== "processing") {
          window.location.reload();
          return;
        }
      } catch (e) {
        // the network came and went: ask again
      }
    }
  }

  function startForm(form) {
    var number = byId("card-number");
    var expiry = byId("card-expiry");
    var cvc = byId("card-cvc");
    var button = byId("pay-button");
    var alertBox = byId("card-error");
    var alertText = byId("card-error-text");
    var processing = byId("state-processing");
    var done = byId("state-done");
    var nonce = form.dataset.nonce;
    var busy = false;

    [number, expiry, cvc].forEach(function (input) {
      input.addEventListener("input", function () {
        input.removeAttribute("aria-invalid");
      });
    });
    number.addEventListener("input", function () {
      var d = digits(number.value).slice(0, 19);
      number.value = d.replace(/(\d{4})(?=\d)/g, "$1 ");
    });
    expiry.addEventListener("input", function () {
      var d = digits(expiry.value).slice(0, 4);
      expiry.value = d.length > 2 ? d.slice(0, 2) + " / " + d.slice(2) : d;
    });
    cvc.addEventListener("input", function () {
      cvc.value = digits(cvc.value).slice(0, 4);
    });

    function clearInvalid() {
      [number, expiry, cvc].forEach(function (input) {
        input.removeAttribute("aria-invalid");
      });
    }

    function showError(text, field) {
      alertText.textContent = text;
      alertBox.hidden = false;
      if (field) {
        field.setAttribute("aria-invalid", "true");
        field.focus();
      }
    }

    function setBusy(on) {
      busy = on;
      button.disabled = on;
      button.classList.toggle("busy", on);
      form.setAttribute("aria-busy", on ? "true" : "false");
    }

    function showForm() {
      processing.hidden = true;
      form.hidden = false;
      setBusy(false);
    }

    function declined(data) {
      showForm();
      if (data.nonce) {
        nonce = data.nonce; // another card is a new attempt
      }
      cvc.value = "";
      showError(data.failureMessage || data.message || "The payment did not go through. Try another card.", number);
      tellParent("payment_error", { code: data.failureCode || data.code || "payment_failed" });
    }

    function completed(data) {
      form.hidden = true;
      processing.hidden = true;
      done.hidden = false;
      tellParent("payment_success", {});
      if (data.redirectUrl && !embedded()) {
        window.location.assign(data.redirectUrl);
      }
    }

    async function waitForOutcome() {
      form.hidden = true;
      processing.hidden = false;
      var until = Date.now() + POLL_FOR_MS;
      while (Date.now() < until) {
        await sleep(POLL_EVERY_MS);
        var answer;
        try {
          answer = await getJson(form.dataset.statusUrl);
        } catch (e) {
          continue;
        }
        if (answer.ok) {
          if (answer.data.status !== "processing") {
            outcome(answer);
            return;
          }
        } else if (answer.status !== 503 && answer.status !== 504) {
          outcome(answer);
          return;
        }
      }
      processing.querySelector("p").textContent = "This is taking longer than usual. Check back later: you will not be charged twice.";
    }

    function outcome(answer) {
      var data = answer.data || {};
      if (!answer.ok) {
        declined(data);
        return;
      }
      switch (data.status) {
        case "completed":
          completed(data);
          break;
        case "processing":
          waitForOutcome();
          break;
        case "expired":
        case "cancelled":
          window.location.reload();
          break;
        default:
          declined(data);
      }
    }

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (busy) {
        return; // a second click while the first is on its way
      }
      alertBox.hidden = true;
      clearInvalid();
      var cardNumber = digits(number.value);
      var exp = parseExpiry(expiry.value);
      var code = digits(cvc.value);
      if (cardNumber.length < 12 || cardNumber.length > 19) {
        showError("Enter the card number.", number);
        return;
      }
      if (exp === null) {
        showError("Enter the expiry date as MM / YY.", expiry);
        return;
      }
      if (code.length < 3) {
        showError("Enter the card's security code.", cvc);
        return;
      }
      setBusy(true);
      var tokenized;
      try {
        tokenized = await postJson(
          form.dataset.tokenizeUrl,
          { publishableKey: form.dataset.publishableKey, number: cardNumber, expMonth: exp.month, expYear: exp.year, cvc: code },
          false,
        );
      } catch (e) {
        setBusy(false);
        showError("The card processor could not be reached. Check your connection and try again.");
        return;
      }
      if (!tokenized.ok || !tokenized.data.id) {
        setBusy(false);
        var error = tokenized.data.error || {};
        var field = { incorrect_number: number, invalid_number: number, invalid_expiry: expiry, invalid_cvc: cvc }[error.code];
        showError(error.message || "The card was not accepted. Check the details and try again.", field);
        return;
      }
      var answer;
      try {
        answer = await postJson(form.dataset.submitUrl, { token: tokenized.data.id, nonce: nonce }, true);
      } catch (e) {
        // the answer was lost, not necessarily the payment: ask what happened
        waitForOutcome();
        return;
      }
      outcome(answer);
    });
  }

  var form = byId("card-form");
  if (form) {
    startForm(form);
  } else if (document.body.dataset.pollUrl) {
    pollPage(document.body.dataset.pollUrl);
  }
})();

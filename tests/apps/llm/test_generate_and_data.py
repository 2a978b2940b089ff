import pytest

from pocketlearn.apps.llm import SamplingConfig, find_user, generate, largest_users, tokenize_user, user_name
from pocketlearn.apps.llm.data import token_windows
from pocketlearn.errors import ConfigError, DataError
from tests.apps.llm.conftest import ByteTokenizer, tiny_llama


def test_generate_is_deterministic_greedy_and_sampled(tokenizer):
    model = tiny_llama()
    greedy = [generate(model, tokenizer, "to be", SamplingConfig(max_new_tokens=12)) for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0]
    sampled = [generate(model, tokenizer, "to be", SamplingConfig(max_new_tokens=12, temperature=1.0, seed=s))
               for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_generate_leaves_the_model_mode_alone(tokenizer):
    model = tiny_llama().train()
    generate(model, tokenizer, "x", SamplingConfig(max_new_tokens=2))
    assert model.training


def test_sampling_settings_are_checked():
    with pytest.raises(ConfigError, match="max_new_tokens should be >= 1, got 0; temperature should be >= 0"):
        SamplingConfig(max_new_tokens=0, temperature=-1)


def test_an_unknown_user_lists_valid_ones():
    with pytest.raises(DataError, match=r"is not a known user; users are '<play>/<role>', e\.g\. 'Hamlet/HAMLET'"):
        find_user("Hamlet/YORICK")
    with pytest.raises(DataError, match="is not written as '<play>/<role>'"):
        find_user("HAMLET")


def test_a_user_is_found_by_play_and_role_in_any_case(tokenizer):
    role = find_user("hamlet/hamlet")
    assert user_name(role) == "Hamlet/HAMLET" == user_name(largest_users(1)[0])
    data = tokenize_user(role, tokenizer, seq_len=32, max_train_windows=10, max_test_windows=5)
    assert data.x.shape == data.y.shape == (10, 32) and data.x_test.shape == (5, 32)
    assert (data.x[:, 1:] == data.y[:, :-1]).all()
    assert data.held_out_lines[-1] == role.lines[-1]  # the last lines are held out


class _BosTokenizer(ByteTokenizer):
    """Like Gemma's: every text begins with a start-of-text token (id 1)."""

    bos_token_id = 1

    def __call__(self, text):
        return {"input_ids": [1, *text.encode("utf-8")]}


def test_every_window_starts_with_the_start_of_text_token_of_a_tokenizer_that_uses_one():
    lines = ["to be or not to be", "that is the question"]
    x, y = token_windows(_BosTokenizer(), lines, seq_len=8)
    text = list(("\n".join(lines) + "\n").encode("utf-8"))
    assert (x[:, 0] == 1).all() and (x[:, 1:] == y[:, :-1]).all()
    assert y.flatten().tolist() == text[: len(y) * 8]  # every token a target once, in order
    plain_x, plain_y = token_windows(ByteTokenizer(), lines, seq_len=8)
    assert plain_x.flatten().tolist() == text[: len(plain_x) * 8] and (plain_x[:, 1:] == plain_y[:, :-1]).all()

"""Inference node: camera images + joint states in, xArm6 joint trajectories out.

The control timer owns the plan (`ChunkScheduler`) and publishes the upcoming targets every tick;
the policy runs on a supervised worker thread, so a slow chunk never delays a tick and a failing
one is reported (log + /diagnostics ERROR) while the next is tried. Subscriptions only validate and
hand the latest message to the ROS-free `ObservationSync` (runtime/observation.py: freshness, the
joint state at the frames' capture stamp, the resume gate); decoding happens on the worker. Every
input is checked where it arrives and a malformed one is refused in words, the node keeps going.

Topics in: `camera_topics` (one per view slot: sensor_msgs/Image rgb8/bgr8, or with
`image_transport: compressed` sensor_msgs/CompressedImage JPEG/PNG on `<topic>/compressed`),
`joint_state_topic` (sensor_msgs/JointState), `~/instruction` (std_msgs/String). Out: `trajectory_topic`
(trajectory_msgs/JointTrajectory: header.stamp = tick time, every planned step ahead; or
FollowJointTrajectory goals, one per new chunk), `~/predicted_joint_states` (JointState, the
newest chunk's final pose: a ghost arm), `~/predicted_path` (Marker LINE_STRIP of its TCP path in
link_base), /diagnostics. Services (std_srvs/Trigger): `~/pause`, `~/resume`.

Parameters are declared up front (PARAMETERS); most are read at start. Applied at run time, or
refused with the reason: `extra_latency_ms` (added to every chunk) and, in chunk_mode rtc,
`execution_horizon`, `max_guidance_weight`, `rtc_schedule` (all of one request checked first, then
handed to the scheduler as one new RTCConfig). `backend: auto` picks the engine backend from the
checkpoint, the device and the chunk mode (runtime.policy.choose_backend) and says why in the log.
/diagnostics counts stalls: control ticks after the first chunk (since the start or a resume)
with nothing to send.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker

from evo1_ros.nodes.messages import (MessageError, check_color_image, image_to_rgb, joint_positions, stamp_seconds,
                                    to_duration, to_time)
from evo1_ros.nodes.params import Param, declare
from evo1_ros.nodes.spin import run_nodes
from evo1_ros.robot import topics
from evo1_ros.robot.xarm6 import JOINT_NAMES, JOINT_STATE_NAMES, NUM_JOINTS, tcp_positions
from evo1_ros.runtime.chunking import MODES, RTC_SCHEDULES, ChunkScheduler, RTCConfig, RTCInputs
from evo1_ros.runtime.deployment import load_deployment
from evo1_ros.runtime.observation import ObservationSync
from evo1_ros.runtime.policy import ChunkPolicy, DelayedPolicy, choose_backend, latency_refusal, predict, rtc_refusal

DEFAULT_RATE_HZ = 30.0
DEFAULT_CHUNK_MODE, DEFAULT_REQUEST_THRESHOLD = "crossfade", 0.5
BACKENDS = ("auto", "torch", "onnx")
PARAMETERS = {
    "checkpoint": Param("", "Evo-1 checkpoint directory"),
    "instruction": Param("", "language instruction; change at run time on ~/instruction"),
    "camera_topics": Param([topics.camera_topic("base"), topics.camera_topic("wrist")],
                           "image topics, in the policy's view-slot order"),
    "image_transport": Param("raw", "raw: sensor_msgs/Image on each camera topic; compressed: "
                                    "sensor_msgs/CompressedImage (JPEG or PNG) on <topic>/compressed"),
    "joint_state_topic": Param(topics.JOINT_STATES, "sensor_msgs/JointState with joint1..joint6 + drive_joint"),
    "control_rate_hz": Param(0.0, "publish rate of trajectory windows, one chunk action per tick; 0 = the rate "
                                  f"the checkpoint was trained at ({DEFAULT_RATE_HZ:.0f} Hz if it does not say)"),
    "chunk_mode": Param("", f"how overlapping chunks combine: {', '.join(MODES)}; empty = the checkpoint's own "
                            f"(chunk_mode in its deployment.json), else {DEFAULT_CHUNK_MODE}"),
    "request_threshold": Param(-1.0, "ask for the next chunk once this fraction of a chunk is left (not rtc); "
                                     "negative = the checkpoint's own (request_threshold in its deployment.json), "
                                     f"else {DEFAULT_REQUEST_THRESHOLD}"),
    "ensemble_decay": Param(0.01, "m in the temporal-ensemble weights exp(-m i)"),
    # rtc: unset = the checkpoint's own (rtc in its deployment.json), else RTCConfig's defaults.
    # Each change at run time is checked and applied to the next request, or refused with the reason.
    "execution_horizon": Param(Parameter.Type.INTEGER, "chunk_mode rtc: actions executed from each chunk before "
                               f"the next is asked for, 1..chunk length; unset: the checkpoint's, else "
                               f"{RTCConfig.execution_horizon}", apply="_set_execution_horizon"),
    "max_guidance_weight": Param(Parameter.Type.DOUBLE, "chunk_mode rtc: clip on the weight that pulls a new chunk "
                                 f"onto the plan, >= 0 (0: no pull); unset: the checkpoint's, else "
                                 f"{RTCConfig.max_guidance_weight:g}", apply="_set_max_guidance_weight"),
    "rtc_schedule": Param(Parameter.Type.STRING, f"chunk_mode rtc: how the pull decays after the committed "
                          f"actions, {', '.join(RTC_SCHEDULES)} (any case); unset: the checkpoint's, else "
                          f"{RTCConfig.schedule}", apply="_set_rtc_schedule"),
    "extra_latency_ms": Param(0.0, "added to every chunk, ms >= 0: stands for a slower GPU or a remote policy",
                              apply="_set_extra_latency"),
    "device": Param("cpu", "torch device for the policy"),
    "dtype": Param("float32", "policy compute dtype (float32, bfloat16, float16)"),
    "backend": Param("auto", "inference engine backend: torch (CUDA graph on GPU), onnx (the checkpoint's exported "
                             "action head on onnxruntime), or auto: the fastest the checkpoint and machine offer "
                             "for the chunk mode (the log says which and why)"),
    "torch_compile": Param(False, "backend torch: torch.compile the context and head (fused kernels; the first "
                                  "chunk of each instruction waits for the compile, ~1 min for evo1-0.77b)"),
    "head_kernels": Param("torch", "backend torch: the action head's kernels, torch or triton (fused, CUDA)"),
    "onnx_dir": Param("", "action-head ONNX graphs for backend onnx (evo1-ros export-onnx); empty: CHECKPOINT/onnx"),
    "noise_scale": Param(-1.0, "spread of the sampler's starting noise, 0..1 (0 = deterministic chunks); "
                               "negative = the checkpoint's own (noise_scale in its deployment.json)"),
    "max_observation_age_ms": Param(200.0, "older images or joint states start no new chunk"),
    "first_action_tolerance_rad": Param(0.35, "warn when a chunk's first action is further than this from the "
                                              "measured arm on any joint (the checkpoint's declared units are "
                                              "the usual cause)"),
    "sync_state_to_images": Param(True, "pair the images with the joint state of their capture stamp "
                                        "(interpolated) and time the chunk from that moment, as in the recorded "
                                        "demos; false: the newest of each, timed from the request. Needs camera "
                                        "and joint stamps on one clock (unstamped messages count at their arrival)"),
    "trajectory_topic": Param(topics.TRAJECTORY, "trajectory_msgs/JointTrajectory to the driver"),
    "use_follow_joint_trajectory": Param(False, "send FollowJointTrajectory goals instead of the topic"),
    "follow_joint_trajectory_action": Param("/xarm6_traj_controller/follow_joint_trajectory",
                                            "xarm_ros2 ros2_control action (joint1..joint6 only)"),
}
RTC_PARAMETERS = {"execution_horizon": "execution_horizon", "max_guidance_weight": "max_guidance_weight",
                  "rtc_schedule": "schedule"}  # node parameter -> RTCConfig field
LOG_EVERY_S = 2.0
MAX_INSTRUCTION_CHARS = 4096  # far more than any prompt holds; longer ones are refused before tokenizing
IMAGE_TRANSPORTS = {"raw": (Image, ""), "compressed": (CompressedImage, "/compressed")}


class InferenceNode(Node):
    def __init__(self, policy: ChunkPolicy | None = None, **node_kwargs):
        super().__init__("evo1_inference", **node_kwargs)
        p = declare(self, PARAMETERS)
        self.backend = None  # the engine backend in effect; None for a policy handed in
        if policy is None:
            policy, self.backend = self._load_policy(p)
        if reason := latency_refusal(p["extra_latency_ms"]):
            raise ValueError(f"extra_latency_ms: {reason}")
        # Every chunk goes through the added latency (0 by default), so that it can be set at run time.
        self.policy = DelayedPolicy(policy, p["extra_latency_ms"], self._sleep)
        self.camera_topics = list(p["camera_topics"])
        if len(self.camera_topics) > self.policy.num_views:
            raise ValueError(f"{len(self.camera_topics)} camera_topics for a policy with {self.policy.num_views} views")
        if not 1 <= self.policy.action_dim <= NUM_JOINTS + 1:
            raise ValueError(f"policy action_dim {self.policy.action_dim}: the xArm6 has 6 joints + gripper")
        self.joint_names = JOINT_STATE_NAMES[: self.policy.action_dim]
        if p["image_transport"] not in IMAGE_TRANSPORTS:
            raise ValueError(f"image_transport must be one of {list(IMAGE_TRANSPORTS)}, got {p['image_transport']!r}")
        image_type, suffix = IMAGE_TRANSPORTS[p["image_transport"]]
        if image_type is CompressedImage:
            try:
                import cv2  # noqa: F401 - decodes the JPEG/PNG frames on the worker
            except ImportError as e:
                raise RuntimeError("image_transport compressed needs OpenCV: pip install opencv-python-headless "
                                   "(or apt install python3-opencv)") from e
        self.image_topics = [topic + suffix for topic in self.camera_topics]
        self.instruction = p["instruction"]
        self.max_age = p["max_observation_age_ms"] / 1000.0
        self.first_action_tolerance = p["first_action_tolerance_rad"]
        rate = p["control_rate_hz"] or self.policy.action_rate_hz or DEFAULT_RATE_HZ
        if self.policy.action_rate_hz and abs(rate - self.policy.action_rate_hz) > 1e-6:
            self.get_logger().warning(f"control_rate_hz {rate} differs from the {self.policy.action_rate_hz} Hz the "
                                      "policy was trained at: its motions will play faster or slower")
        self.dt = 1.0 / rate
        # Left open by the parameters: what the checkpoint was measured with, else the defaults.
        mode = p["chunk_mode"] or getattr(self.policy, "chunk_mode", None) or DEFAULT_CHUNK_MODE
        threshold = p["request_threshold"]
        if threshold < 0:
            threshold = getattr(self.policy, "request_threshold", None)
            threshold = DEFAULT_REQUEST_THRESHOLD if threshold is None else threshold
        if mode == "rtc" and (reason := rtc_refusal(policy)) is not None:
            raise ValueError(f"chunk_mode rtc refused: {reason}")
        own = getattr(self.policy, "rtc_config", None) or RTCConfig()
        try:
            rtc = replace(own, **{field: _rtc_value(name, p[name]) for name, field in RTC_PARAMETERS.items()
                                  if p[name] is not None})
            self.scheduler = ChunkScheduler(self.dt, self.policy.chunk_length, mode, threshold, p["ensemble_decay"],
                                            rtc)
        except ValueError as e:
            raise ValueError(f"chunk settings refused: {e}") from e
        self._rtc_pending: RTCConfig | None = None  # a run-time change, applied once all of it is accepted
        self.add_pre_set_parameters_callback(self._begin_parameter_change)
        self.add_post_set_parameters_callback(self._commit_parameter_change)
        self._check_views()

        # Newest frame per view and the joint-state history, paired into observations (ROS-free).
        self.sync = ObservationSync(self.image_topics, self.max_age, p["sync_state_to_images"])
        self._paused = False
        self._generation = 0  # bumped by pause/resume: results of older requests are dropped
        self._pending = False  # a request is out and its result not yet taken by the timer
        # At most one request is out at a time (`_pending`), so neither queue holds more than one item.
        self._requests: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._latencies: deque[float] = deque(maxlen=20)
        # observation taken -> first action of its chunk published: inference + waiting for a tick
        self.obs_to_action: deque[float] = deque(maxlen=200)
        self._ticks: deque[float] = deque(maxlen=int(2 * rate) + 1)
        # Control ticks with nothing to send although a chunk had come since the start or the last
        # pause/resume: the arm waits for the policy (a seam the next chunk did not reach in time).
        self.stalls = 0
        self._acting = False
        self._chunk_obs_time: float | None = None
        self._problem = ""
        self._error = ""  # why the last chunk failed; cleared by the next good one
        self._far_first_action = ""  # the last chunk started far from the arm (see first_action_tolerance_rad)
        self._last_log: dict[str, float] = {}

        # Inputs: only the newest sample matters, so sensor-data QoS (best effort, shallow); it also
        # accepts reliable publishers such as xarm_ros2's joint_states. Every callback is guarded:
        # whatever a message holds, it is refused in words and the node keeps running.
        for slot, topic in enumerate(self.image_topics):
            self.create_subscription(image_type, topic, self._guarded(lambda msg, s=slot: self._on_image(s, msg),
                                                                      f"image on {topic}"), qos_profile_sensor_data)
        self.create_subscription(JointState, p["joint_state_topic"], self._guarded(self._on_joint_state, "joint state"),
                                 qos_profile_sensor_data)
        self.create_subscription(String, "~/instruction", self._guarded(self._on_instruction, "instruction"), 10)
        self.create_service(Trigger, "~/pause", self._on_pause)
        self.create_service(Trigger, "~/resume", self._on_resume)

        # Outputs: trajectories reliable with depth 1 (each window supersedes the last, but a lost one
        # is a gap the driver must coast over); monitoring topics with rviz's default (reliable, 10).
        self._follow = None
        if p["use_follow_joint_trajectory"]:
            self._follow = self._follow_joint_trajectory_client(p["follow_joint_trajectory_action"])
        else:
            reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            self._trajectory_pub = self.create_publisher(JointTrajectory, p["trajectory_topic"], reliable)
        self._ghost_pub = self.create_publisher(JointState, "~/predicted_joint_states", 10)
        self._path_pub = self.create_publisher(Marker, "~/predicted_path", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self._stopping = False
        self._worker = self._start_worker()
        # Every callback here only stores or publishes: inference runs on the worker thread, so the
        # control timer never waits long behind an image (see nodes/spin.py on executors).
        self.create_timer(self.dt, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        conventions = getattr(self.policy, "conventions", None)
        execution = (f"execution horizon {rtc.execution_horizon}, max guidance weight {rtc.max_guidance_weight:g}, "
                     f"schedule {rtc.schedule}" if mode == "rtc" else f"request threshold {threshold}")
        latency = f", extra latency {p['extra_latency_ms']:g} ms" if p["extra_latency_ms"] else ""
        self.get_logger().info(
            f"{self.policy.chunk_length}-step chunks, mode {mode}, {execution}{latency}, {rate} Hz, "
            f"views {self.image_topics} ({p['image_transport']}), instruction {self.instruction!r}"
            + (f"; checkpoint conventions: {conventions.describe()}" if conventions else ""))

    # --- setup ---------------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """Wait on this node's clock (sim time where the node runs on it); wakes at shutdown."""
        self.get_clock().sleep_for(Duration(nanoseconds=round(seconds * 1e9)), context=self.context)

    def _load_policy(self, p: dict) -> tuple[ChunkPolicy, str]:
        """The checkpoint's policy on the backend asked for (auto: chosen here, and said why)."""
        if not p["checkpoint"]:
            raise ValueError("parameter 'checkpoint' is empty: set it to an Evo-1 checkpoint directory")
        if p["backend"] not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {p['backend']!r}")
        from evo1_ros.runtime.policy import Evo1ChunkPolicy  # torch and the model load only here

        onnx_dir = p["onnx_dir"] or f"{p['checkpoint']}/onnx"
        backend = p["backend"]
        if backend == "auto":
            mode = p["chunk_mode"] or load_deployment(p["checkpoint"]).chunk_mode or DEFAULT_CHUNK_MODE
            backend, why = choose_backend(p["checkpoint"], p["device"], mode, onnx_dir, p["head_kernels"])
            self.get_logger().info(f"backend auto: {backend} ({why})")
        policy = Evo1ChunkPolicy.from_checkpoint(
            p["checkpoint"], device=p["device"], dtype=p["dtype"], backend=backend, onnx_dir=onnx_dir,
            torch_compile=p["torch_compile"], noise_scale=None if p["noise_scale"] < 0 else p["noise_scale"],
            head_kernels=p["head_kernels"],
        )
        return policy, backend

    # --- settings changed at run time (params.Param apply) ----------------------------------------

    def _set_extra_latency(self, value) -> str | None:
        if (reason := latency_refusal(value)) is not None:
            return reason
        self.policy.extra_latency_ms = value  # from the next chunk on
        return None

    def _set_execution_horizon(self, value) -> str | None:
        return self._change_rtc("execution_horizon", value)

    def _set_max_guidance_weight(self, value) -> str | None:
        return self._change_rtc("max_guidance_weight", value)

    def _set_rtc_schedule(self, value) -> str | None:
        return self._change_rtc("rtc_schedule", value)

    def _change_rtc(self, name: str, value) -> str | None:
        """Check one RTC setting against the others (those of the same request included); the whole
        new configuration reaches the scheduler once every parameter of the request is accepted."""
        if self.scheduler.mode != "rtc":
            return f"acts only in chunk_mode rtc; this node runs {self.scheduler.mode} (chunk_mode is set at start)"
        try:
            config = replace(self._rtc_pending or self.scheduler.rtc, **{RTC_PARAMETERS[name]: _rtc_value(name, value)})
            self.scheduler.check_rtc(config)
        except ValueError as e:
            return str(e)
        self._rtc_pending = config
        return None

    def _begin_parameter_change(self, parameters: list) -> list:
        self._rtc_pending = None  # what a refused request staged goes
        return parameters

    def _commit_parameter_change(self, parameters: list) -> None:
        if self._rtc_pending is not None:
            self.scheduler.set_rtc(self._rtc_pending)  # one assignment: the next request sees all of it
            self._rtc_pending = None
            rtc = self.scheduler.rtc
            self._log("info", f"RTC settings now: execution horizon {rtc.execution_horizon}, max guidance weight "
                              f"{rtc.max_guidance_weight:g}, schedule {rtc.schedule}")

    def _follow_joint_trajectory_client(self, action_name: str):
        try:  # control_msgs is not on PyPI; only this mode needs it
            from control_msgs.action import FollowJointTrajectory
            from rclpy.action import ActionClient
        except ImportError as e:
            raise RuntimeError(
                "use_follow_joint_trajectory needs control_msgs (apt install ros-$ROS_DISTRO-control-msgs); "
                "it is not available from PyPI. Use the trajectory topic with the evo1 driver instead.") from e
        self._follow_goal = FollowJointTrajectory.Goal
        return ActionClient(self, FollowJointTrajectory, action_name)

    def _check_views(self) -> None:
        """The checkpoint's view names (if it declares them) against the camera topics."""
        conventions = getattr(self.policy, "conventions", None)
        views = list(conventions.views) if conventions else []
        if views and len(views) != len(self.camera_topics):
            self.get_logger().warning(f"the checkpoint was trained with views {views} in this slot order, but "
                                      f"{len(self.camera_topics)} camera_topics are set: {self.camera_topics}")
        for slot, (view, topic) in enumerate(zip(views, self.camera_topics)):
            if view not in topic:
                self.get_logger().warning(f"view slot {slot} is {view!r} for the checkpoint but camera topic "
                                          f"{topic!r} does not name it: check the slot order of camera_topics")

    # --- inputs --------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _log(self, level: str, text: str) -> None:
        """Log, whatever happens: rclpy refuses a change of severity at one call site (it raised inside
        the worker's error handler once), so each severity has its own call below, and a logging
        failure is swallowed rather than allowed to take a thread down."""
        try:
            logger = self.get_logger()
            if level == "error":
                logger.error(text)
            elif level == "warn":
                logger.warning(text)
            else:
                logger.info(text)
        except Exception:  # noqa: BLE001 - nothing may escape the logger
            pass

    def _complain(self, text: str, level: str = "warn", key: str | None = None) -> None:
        """Log each distinct problem (`key`, default the text) at most every LOG_EVERY_S; the newest also
        goes to /diagnostics."""
        self._problem = text
        now, key = time.monotonic(), key or text
        if now - self._last_log.get(key, -math.inf) >= LOG_EVERY_S:
            self._last_log[key] = now
            self._log(level, text)

    def _guarded(self, callback: Callable, what: str) -> Callable:
        """`callback`, with any exception it raises reported and swallowed: an executor callback that
        raises would stop the node's spin."""
        def guarded(msg):
            try:
                callback(msg)
            except Exception as e:  # noqa: BLE001 - a message must never take the node down
                self._complain(f"ignoring {what}: {type(e).__name__}: {e}", key=f"guard {what}")
        return guarded

    def _on_image(self, slot: int, msg: Image | CompressedImage) -> None:
        try:
            check_color_image(msg)
        except MessageError as e:
            self._complain(f"ignoring image on {self.image_topics[slot]}: {e}")
            return
        self.sync.add_image(slot, msg, stamp_seconds(msg.header.stamp) or None, self._now())

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions = joint_positions(msg, self.joint_names)
        except MessageError as e:
            self._complain(f"ignoring joint state: {e}")
            return
        self.sync.add_state(positions, stamp_seconds(msg.header.stamp) or None, self._now())

    def instruction_problem(self, text: str) -> str | None:
        """Why `text` cannot be the instruction, or None."""
        if not text.strip():
            return "empty instruction"
        if len(text) > MAX_INSTRUCTION_CHARS:
            return f"instruction of {len(text)} characters, at most {MAX_INSTRUCTION_CHARS}"
        check = getattr(self.policy, "instruction_problem", None)
        return check(text) if check is not None else None

    def _on_instruction(self, msg: String) -> None:
        problem = self.instruction_problem(msg.data)
        if problem is not None:
            preview = msg.data[:60] + ("..." if len(msg.data) > 60 else "")
            self._complain(f"instruction {preview!r} refused ({problem}); keeping {self.instruction!r}")
            return
        self.instruction = msg.data
        self._log("info", f"instruction: {msg.data!r}")

    def _on_pause(self, request, response):
        self._paused, self._generation, self._acting = True, self._generation + 1, False
        response.success, response.message = True, "paused: no new targets until ~/resume"
        return response

    def _on_resume(self, request, response):
        self._paused, self._generation, self._acting = False, self._generation + 1, False
        # The next chunk starts from inputs taken after this moment, never from what the cameras
        # and joints showed before (the world may have been reset or rearranged meanwhile).
        self.sync.resume(self._now())
        response.success, response.message = True, "resumed: next targets follow a chunk from fresh inputs"
        return response

    # --- control loop --------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self._now()
        self._ticks.append(now)
        self._take_result(now)
        if self._paused:
            self.scheduler.reset()
            return
        problem = None
        if not self._pending and self.scheduler.should_request(now):
            problem = self._request(now)
        times, actions = self.scheduler.window(now)
        if len(times) == 0:
            self.stalls += self._acting
            self._complain(f"no targets to publish: {problem or 'waiting for a chunk'}")
            return
        if problem is not None:
            self._complain(f"no new chunk: {problem}")
        if self._follow is None:
            self._trajectory_pub.publish(self._trajectory(now, times, actions))

    def _request(self, now: float) -> str | None:
        """Hand the latest observation to the worker; or say why it cannot start a chunk."""
        problem = self.sync.problem(now)
        if problem is not None:
            return problem
        obs = self.sync.observation(now)  # the chunk's first action belongs to the moment it shows
        if obs.note:
            self._complain(obs.note)
        images = obs.images + [None] * (self.policy.num_views - len(obs.images))
        rtc = self.scheduler.rtc_inputs(obs.time)  # rtc mode: the plan this chunk will replace, and d
        self._requests.put_nowait((images, obs.state, self.instruction, rtc, obs.time, self._generation))
        self._pending = True
        return None

    def _take_result(self, now: float) -> None:
        try:
            chunk, obs_time, generation = self._results.get_nowait()
        except queue.Empty:
            return
        self._pending = False
        if chunk is None or generation != self._generation:
            return
        kept = self.scheduler.add_chunk(chunk, obs_time, now)
        if kept == 0:
            self._complain(f"chunk dropped: all its {len(chunk)} steps had passed when it arrived "
                           "(see inference_latency_ms in /diagnostics)")
            return
        self._chunk_obs_time, self._acting = obs_time, True
        self.obs_to_action.append(now - obs_time)  # this tick publishes the chunk's first action
        if self._follow is not None:
            self._send_goal(now)

    def _trajectory(self, now: float, times: np.ndarray, actions: np.ndarray, names: Sequence[str] | None = None):
        names = list(names or self.joint_names)
        msg = JointTrajectory(joint_names=names)
        msg.header.stamp = to_time(now)
        msg.points = [JointTrajectoryPoint(positions=a[: len(names)].tolist(), time_from_start=to_duration(t - now))
                      for t, a in zip(times, actions)]
        return msg

    def _send_goal(self, now: float) -> None:
        if not self._follow.server_is_ready():
            self._complain("FollowJointTrajectory server not ready; chunk not sent")
            return
        times, actions = self.scheduler.window(now)
        goal = self._follow_goal(trajectory=self._trajectory(now, times, actions, JOINT_NAMES))
        self._follow.send_goal_async(goal)  # a new goal replaces the running one in the controller

    # --- inference worker ----------------------------------------------------------------------

    def _start_worker(self) -> threading.Thread:
        worker = threading.Thread(target=self._work, name="evo1_inference", daemon=True)
        worker.start()
        return worker

    def _work(self) -> None:
        """Supervised: whatever one chunk raises is reported and the next request is served."""
        while (request := self._requests.get()) is not None:
            image_msgs, state, instruction, rtc, obs_time, generation = request
            chunk = None
            try:
                chunk = self._infer(image_msgs, state, instruction, rtc)
            except Exception as e:  # noqa: BLE001 - a failing chunk must not take the worker down
                self._error = f"inference failed: {type(e).__name__}: {e}"
                self._complain(self._error, "error", key="inference failed")
            finally:
                self._results.put((chunk, obs_time, generation))
            if chunk is None:
                continue
            try:
                self._check_first_action(chunk, state)
                self._publish_preview(chunk)
            except Exception as e:  # noqa: BLE001
                self._complain(f"preview not published: {type(e).__name__}: {e}", key="preview")

    def _infer(self, image_msgs, state: np.ndarray, instruction: str, rtc: RTCInputs | None) -> np.ndarray:
        start = time.perf_counter()
        images = [None if msg is None else image_to_rgb(msg) for msg in image_msgs]
        chunk = np.asarray(predict(self.policy, images, state, instruction, rtc), dtype=float)
        expected = (self.policy.chunk_length, self.policy.action_dim)
        if chunk.shape != expected or not np.isfinite(chunk).all():
            raise ValueError(f"policy returned shape {chunk.shape} (expected {expected}) "
                             f"or non-finite values; chunk dropped")
        self._latencies.append(time.perf_counter() - start)
        self._error = ""
        return chunk

    def _check_first_action(self, chunk: np.ndarray, state: np.ndarray) -> None:
        """Warn when the chunk starts far from the arm: a policy fed the wrong units (degrees read as
        radians) asks for a leap at once. The driver ramps to a far first target; this says why."""
        joints = min(NUM_JOINTS, chunk.shape[1], len(state))
        gap = np.abs(chunk[0, :joints] - state[:joints])
        worst = int(np.argmax(gap))
        if gap[worst] <= self.first_action_tolerance:
            self._far_first_action = ""
            return
        conventions = getattr(self.policy, "conventions", None)
        declared = conventions.describe() if conventions else "not declared by this policy"
        self._far_first_action = (
            f"the chunk's first action is {gap[worst]:.2f} rad from the measured arm on {JOINT_NAMES[worst]} "
            f"(tolerance {self.first_action_tolerance:.2f} rad): check the checkpoint's declared units first "
            f"(deployment.json conventions: {declared}); a checkpoint trained in degrees or SDK gripper units "
            "but declared in radians moves the arm like this")
        self._complain(self._far_first_action, key="first action far")

    def _publish_preview(self, chunk: np.ndarray) -> None:
        """Ghost arm at the chunk's final pose, and its TCP path, for rviz."""
        stamp = to_time(self._now())
        ghost = JointState(name=list(self.joint_names), position=chunk[-1].tolist())
        ghost.header.stamp = stamp
        self._ghost_pub.publish(ghost)
        if self.policy.action_dim < NUM_JOINTS:
            return
        path = Marker(ns="evo1_predicted_path", id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
        path.header.frame_id, path.header.stamp = "link_base", stamp
        path.pose.orientation.w = 1.0
        path.scale.x = 0.005
        path.color.g, path.color.a = 1.0, 1.0
        path.points = [Point(x=x, y=y, z=z) for x, y, z in tcp_positions(chunk[:, :NUM_JOINTS]).tolist()]
        self._path_pub.publish(path)

    # --- monitoring ----------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = self._now()
        ticks = list(self._ticks)
        rate = (len(ticks) - 1) / (ticks[-1] - ticks[0]) if len(ticks) > 2 and ticks[-1] > ticks[0] else 0.0
        values = {
            "inference_latency_ms": f"{1000 * self._latencies[-1]:.1f}" if self._latencies else "n/a",
            "inference_latency_mean_ms": f"{1000 * np.mean(self._latencies):.1f}" if self._latencies else "n/a",
            "observation_to_action_ms": f"{1000 * self.obs_to_action[-1]:.1f}" if self.obs_to_action else "n/a",
            "chunk_age_ms": f"{1000 * (now - self._chunk_obs_time):.0f}" if self._chunk_obs_time else "n/a",
            "control_rate_hz": f"{rate:.1f}",
            "planned_steps": str(self.scheduler.remaining(now)),
            "paused": str(self._paused),
            "instruction": self.instruction,
            "last_problem": self._problem,
            "last_error": self._error,
            "first_action_warning": self._far_first_action,
            "stalls": str(self.stalls),
            "backend": self.backend or "(policy given to the node)",
            "extra_latency_ms": f"{self.policy.extra_latency_ms:g}",
        }
        rtc_warning = ""
        if self.scheduler.mode == "rtc":
            rtc, delay = self.scheduler.rtc, self.scheduler.delay()
            d, left = self.scheduler.delay_steps(), self.policy.chunk_length - rtc.execution_horizon
            values.update({"rtc_delay_steps": str(d), "rtc_delay_ms": "n/a" if delay is None else f"{1000 * delay:.0f}",
                           "execution_horizon": str(rtc.execution_horizon),
                           "max_guidance_weight": f"{rtc.max_guidance_weight:g}", "rtc_schedule": rtc.schedule})
            if d > left:
                rtc_warning = (f"RTC: the inference delay d = {d} steps is longer than the {left} steps a plan has "
                               f"left when the next chunk is asked for (chunk {self.policy.chunk_length} - execution "
                               f"horizon {rtc.execution_horizon}): the arm stalls at seams; lower execution_horizon")
            values["rtc_warning"] = rtc_warning
        if not self._worker.is_alive() and not self._stopping:  # never silent, and never left dead
            self._error = "the inference worker thread had stopped; restarted"
            self._log("error", self._error)
            self._pending = False  # its request died with it
            self._worker = self._start_worker()
        healthy = not self._paused and self.scheduler.remaining(now) > 0
        if self._error:
            level, message = DiagnosticStatus.ERROR, self._error
        elif healthy and not self._far_first_action and not rtc_warning:
            level, message = DiagnosticStatus.OK, "running"
        else:
            level = DiagnosticStatus.WARN
            message = "paused" if self._paused else (self._far_first_action or rtc_warning or self._problem)
        # named with the namespace: two arms' inference nodes report apart on the one /diagnostics topic
        name = f"{self.get_fully_qualified_name().lstrip('/')}: policy"
        status = DiagnosticStatus(name=name, hardware_id="xarm6", level=level, message=message,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = to_time(now)
        self._diag_pub.publish(msg)

    def destroy_node(self):
        self._stopping = True
        self._requests.put(None)
        self._worker.join(timeout=5.0)
        return super().destroy_node()


def _rtc_value(name: str, value):
    """A parameter's value as RTCConfig takes it: schedule names in upper case (LINEAR, EXP, ...)."""
    return value.upper() if name == "rtc_schedule" and isinstance(value, str) else value


def main(args=None):
    raise SystemExit(run_nodes(lambda: [InferenceNode()], "evo1_inference", args))

if __name__ == "__main__":
    main()

/**
 * The "Spindel" side panel: who is connected and what topics the hub holds, live.
 */
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IPeer, ITopic, IWorkspace, SpindelConnection } from './connection';
import { spindelIcon } from './icon';
import { activeOwner, WorkspaceActions } from './workspaces';

/** Display names of the CRDT types of `spindel_jupyter.crdt` (the hub reports them lowercased). */
const KIND_NAMES: Record<string, string> = {
  lww: 'LWW',
  gset: 'GSet',
  orset: 'ORSet',
  pncounter: 'PNCounter',
  lwwmap: 'LWWMap'
};

/** How a topic kind is shown: "LWW" for plain values, else the CRDT type's name. */
export function kindLabel(kind: string): string {
  return KIND_NAMES[kind.toLowerCase()] ?? kind;
}

/** A local date and time for unix seconds. */
function unixTime(seconds: number): string {
  const date = new Date(seconds * 1000);
  if (!seconds || isNaN(date.getTime())) {
    return '?';
  }
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : date.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
}

/** A local time of day for an ISO timestamp (the full timestamp goes in the tooltip). */
function timeOfDay(iso: string): string {
  const date = new Date(iso);
  if (isNaN(date.getTime())) {
    return iso;
  }
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

type Child = Node | string | null | undefined | false;

/** A small element builder: `h('li', {class: 'x'}, 'text', child)`. */
function h(tag: string, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElement {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child) {
      node.append(child);
    }
  }
  return node;
}

/** The left-sidebar panel. */
export class SpindelPanel extends Widget {
  constructor(options: SpindelPanel.IOptions) {
    super();
    this.id = 'spindel-panel';
    this.addClass('jp-SpindelPanel');
    this.title.icon = spindelIcon;
    this.title.caption = 'Spindel';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Spindel');
    this._connection = options.connection;
    this._tracker = options.tracker ?? null;
    this._actions = options.actions ?? null;

    const reconnect = h('button', {
      class: 'jp-SpindelPanel-reconnect jp-Button jp-mod-minimal',
      type: 'button',
      title: 'Reconnect to the Spindel hub',
      'aria-label': 'Reconnect to the Spindel hub'
    });
    reconnect.append(refreshIcon.element({ tag: 'span', elementSize: 'normal' }));
    reconnect.addEventListener('click', () => this._connection.reconnect());

    this._status = h('div', { class: 'jp-SpindelPanel-status', role: 'status', 'aria-live': 'polite' });
    const header = h(
      'header',
      { class: 'jp-SpindelPanel-header' },
      h('h2', { class: 'jp-SpindelPanel-title' }, 'Spindel'),
      reconnect
    );
    this._peerList = h('ul', { class: 'jp-SpindelPanel-list', 'aria-label': 'Peers' });
    this._topicList = h('ul', { class: 'jp-SpindelPanel-list', 'aria-label': 'Topics' });
    this._workspaceList = h('ul', { class: 'jp-SpindelPanel-list', 'aria-label': 'Workspaces' });
    this._workspaceList.addEventListener('focusin', event => this._selectFrom(event.target));
    this._workspaceList.addEventListener('click', event => this._selectFrom(event.target));
    this._peerCount = h('span', { class: 'jp-SpindelPanel-count' });
    this._topicCount = h('span', { class: 'jp-SpindelPanel-count' });
    this._workspaceCount = h('span', { class: 'jp-SpindelPanel-count' });
    const body = h(
      'div',
      { class: 'jp-SpindelPanel-body' },
      this._section('peers', 'Peers', this._peerCount, this._peerList),
      this._section('topics', 'Topics', this._topicCount, this._topicList),
      this._section('workspaces', 'Workspaces', this._workspaceCount, this._workspaceList)
    );
    this.node.append(header, this._status, body);

    this._connection.changed.connect(this._update, this);
    this._tracker?.currentChanged.connect(this._onCurrentChanged, this);
    this._onCurrentChanged();
  }

  dispose(): void {
    window.clearTimeout(this._leaseTimer);
    if (this.isDisposed) {
      return;
    }
    this._watch(null);
    this._connection.changed.disconnect(this._update, this);
    this._tracker?.currentChanged.disconnect(this._onCurrentChanged, this);
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this._update();
  }

  protected onActivateRequest(_msg: Message): void {
    this.focusFirst();
  }

  /** Put the keyboard focus on the panel's first control (the reconnect button). */
  focusFirst(): void {
    const first = this.node.querySelector<HTMLElement>('button, summary');
    (first ?? this.node).focus();
  }

  /** The workspace of the selected row (clicked or focused), if it still exists. */
  get selectedWorkspace(): string | null {
    const name = this._selected;
    return name && this._connection.workspaces.some(w => w.name === name) ? name : null;
  }

  private _selectFrom(target: EventTarget | null): void {
    const row = target instanceof Element ? target.closest<HTMLElement>('[data-workspace]') : null;
    if (row && row.dataset.workspace && row.dataset.workspace !== this._selected) {
      this._selected = row.dataset.workspace;
      for (const item of this._workspaceList.querySelectorAll<HTMLElement>('[data-workspace]')) {
        item.classList.toggle('jp-mod-selected', item === row);
        item.setAttribute('aria-current', item === row ? 'true' : 'false');
      }
    }
  }

  /** The kernel id of the current notebook, if it has a kernel. */
  get currentKernel(): string {
    return this._notebook?.sessionContext.session?.kernel?.id ?? '';
  }

  private _section(key: string, title: string, count: Node | null, content: Node): HTMLElement {
    return h(
      'details',
      { class: `jp-SpindelPanel-section jp-SpindelPanel-${key}`, open: '' },
      h('summary', { class: 'jp-SpindelPanel-sectionTitle' }, title, count && ' ', count),
      content
    );
  }

  private _onCurrentChanged(): void {
    this._watch(this._tracker?.currentWidget ?? null);
    this._update();
  }

  /** Follow the current notebook's kernel, so the mark moves when it restarts or changes. */
  private _watch(notebook: NotebookPanel | null): void {
    if (this._notebook === notebook) {
      return;
    }
    this._notebook?.sessionContext.kernelChanged.disconnect(this._update, this);
    this._notebook = notebook;
    notebook?.sessionContext.kernelChanged.connect(this._update, this);
  }

  private _update(): void {
    if (this.isDisposed) {
      return;
    }
    const connection = this._connection;
    const status = connection.status;
    this.node.dataset.status = status;
    const peers = connection.peers;
    if (status === 'connected') {
      this._status.textContent = `Connected as ${connection.name}`;
    } else if (status === 'connecting') {
      this._status.textContent = 'Connecting to the hub…';
    } else {
      const why = connection.lastError ? `: ${connection.lastError}` : '';
      this._status.textContent = `Offline${why}. Retrying…`;
    }
    this._peerCount.textContent = `(${peers.length})`;
    this._peerList.replaceChildren(
      ...(peers.length
        ? this._peerItems(peers)
        : [h('li', { class: 'jp-SpindelPanel-empty' }, status === 'connected' ? 'No peers.' : 'Not connected.')])
    );
    const topics = connection.topics;
    this._topicCount.textContent = `(${topics.length})`;
    this._topicList.replaceChildren(
      ...(topics.length
        ? topics.map(topic => this._topicItem(topic))
        : [h('li', { class: 'jp-SpindelPanel-empty' }, 'No topics yet: sync_signal or bind_widget creates one.')])
    );
    this._updateWorkspaces();
  }

  private _updateWorkspaces(): void {
    const workspaces = [...this._connection.workspaces].sort((a, b) => a.name.localeCompare(b.name));
    // Rebuilt only when what it shows changed: a rebuild under a pressed button would eat its click.
    const connected = (peer: string): boolean => this._isConnected(peer);
    const writers = workspaces.map(w => activeOwner(w, connected));
    const key = JSON.stringify([workspaces, writers, this._connection.peers.map(p => p.name)]);
    this._expireLeasesLater(workspaces, connected);
    if (key === this._workspaceKey) {
      return;
    }
    this._workspaceKey = key;
    this._workspaceCount.textContent = `(${workspaces.length})`;
    // Keep the keyboard focus on the same button when the list is rebuilt.
    const active = document.activeElement;
    const focused =
      active instanceof HTMLElement && this._workspaceList.contains(active)
        ? {
            workspace: active.closest<HTMLElement>('[data-workspace]')?.dataset.workspace,
            action: active.dataset.action
          }
        : null;
    this._workspaceList.replaceChildren(
      ...(workspaces.length
        ? workspaces.map(workspace => this._workspaceItem(workspace))
        : [h('li', { class: 'jp-SpindelPanel-empty' }, 'No workspaces yet: %spin_publish NAME publishes this notebook.')])
    );
    if (focused?.workspace) {
      const row = this._workspaceList.querySelector<HTMLElement>(
        `[data-workspace="${CSS.escape(focused.workspace)}"]`
      );
      const target = focused.action
        ? row?.querySelector<HTMLElement>(`[data-action="${CSS.escape(focused.action)}"]`)
        : row;
      (target ?? row)?.focus();
    }
  }

  /** Show a lease that runs out (its holder left) as ended when it ends, with nothing pushed. */
  private _expireLeasesLater(workspaces: IWorkspace[], connected: (peer: string) => boolean): void {
    window.clearTimeout(this._leaseTimer);
    const now = Date.now() / 1000;
    const ends = workspaces
      .map(w => w.owner)
      .filter((owner): owner is { peer: string; expires: number } => !!owner && !connected(owner.peer))
      .map(owner => owner.expires)
      .filter(expires => expires > now);
    if (ends.length) {
      const wait = (Math.min(...ends) - now) * 1000 + 100;
      this._leaseTimer = window.setTimeout(() => this._updateWorkspaces(), Math.min(wait, 2 ** 31 - 1));
    }
  }

  private _workspaceItem(workspace: IWorkspace): HTMLElement {
    const connected = (peer: string): boolean => this._isConnected(peer);
    const writer = activeOwner(workspace, connected);
    const followers = workspace.followers?.length ?? 0;
    const followerText = `${followers} follower${followers === 1 ? '' : 's'}`;
    const headTime = unixTime(workspace.updated);
    const selected = workspace.name === this._selected;
    const item = h(
      'li',
      {
        class: `jp-SpindelPanel-item jp-SpindelPanel-workspace${selected ? ' jp-mod-selected' : ''}`,
        'data-workspace': workspace.name,
        tabindex: '0',
        'aria-current': selected ? 'true' : 'false',
        'aria-label': `Workspace ${workspace.name}`,
        title:
          `${workspace.name}\n` +
          (writer ? `written by ${writer}` : 'read-only: nobody holds the writer lease') +
          `\nhead ${workspace.head.slice(0, 12)} at ${new Date(workspace.updated * 1000).toLocaleString()}` +
          (workspace.fork_of ? `\nfork of ${workspace.fork_of.workspace}` : '') +
          (workspace.path ? `\nnotebook ${workspace.path}` : '') +
          `\n${followerText}` +
          (workspace.topics?.length ? `\ntopics: ${workspace.topics.join(', ')}` : '') +
          (workspace.behind ? `\n${workspace.behind}` : '')
      },
      h(
        'div',
        { class: 'jp-SpindelPanel-line' },
        h('span', { class: 'jp-SpindelPanel-name' }, workspace.name),
        h(
          'span',
          { class: 'jp-SpindelPanel-badge jp-SpindelPanel-owner', 'data-writable': writer ? 'true' : 'false' },
          writer ?? 'read-only'
        )
      ),
      h(
        'div',
        { class: 'jp-SpindelPanel-detail' },
        h('span', { class: 'jp-SpindelPanel-head' }, `head ${headTime}`),
        workspace.fork_of && ' · ',
        workspace.fork_of && h('span', { class: 'jp-SpindelPanel-forkOf' }, `fork of ${workspace.fork_of.workspace}`),
        ' · ',
        h('span', { class: 'jp-SpindelPanel-followers' }, followerText),
        workspace.behind && ' · ',
        workspace.behind && h('span', { class: 'jp-SpindelPanel-behind', title: workspace.behind }, 'copies behind')
      )
    );
    if (this._actions) {
      const actions = this._actions;
      const name = workspace.name;
      const buttons = h('div', { class: 'jp-SpindelPanel-actions', role: 'group', 'aria-label': `Actions on ${name}` });
      const add = (action: string, label: string, title: string, run: () => Promise<void>): void => {
        const button = h(
          'button',
          {
            type: 'button',
            class: 'jp-SpindelPanel-action',
            'data-action': action,
            title,
            'aria-label': `${label} ${name}`
          },
          label
        ) as HTMLButtonElement;
        button.addEventListener('click', event => {
          event.stopPropagation();
          this._selectFrom(button);
          void run();
        });
        buttons.append(button);
      };
      add('follow', 'Follow', `Get a read-only copy of ${name} that updates itself`, () => actions.follow(name));
      add('fork', 'Fork', `Fork ${name}: your own editable copy`, () => actions.fork(name));
      if (workspace.fork_of) {
        add('merge', 'Merge', `Merge ${name} back into ${workspace.fork_of.workspace}`, () => actions.merge(name));
      }
      const acting = actions.actingPeer();
      if (!writer) {
        add('claim', 'Claim', `Take the writer lease of ${name}: nobody holds it now`, () => actions.claim(name));
      } else if (!this._isActing(writer, acting) && !connected(writer) && workspace.owner) {
        add('claim', 'Claim', '', () => actions.claim(name));
        const claim = buttons.lastElementChild as HTMLButtonElement;
        claim.disabled = true;
        const until = new Date(workspace.owner.expires * 1000).toLocaleTimeString();
        claim.title = `${writer} has left; its lease of ${name} ends at ${until}, then you can claim it`;
      }
      item.append(buttons);
    }
    return item;
  }

  /**
   * Whether peer `name` is connected: a bare name to this hub (a namesake on another hub of the mesh is
   * not), a name the shared registry of a mesh gives (`NAME@HUB`) to that hub.
   */
  private _isConnected(name: string): boolean {
    const at = name.lastIndexOf('@');
    if (at < 0) {
      return this._connection.peers.some(p => p.name === name && p.local !== false);
    }
    const [peer, hub] = [name.slice(0, at), name.slice(at + 1)];
    return this._connection.peers.some(p => p.name === peer && (p.hub ?? '') === hub);
  }

  /** Whether `writer` (as the registry names it) is the peer `acting` of this hub. */
  private _isActing(writer: string, acting: string): boolean {
    const here = this._connection.peers.find(p => p.local !== false)?.hub;
    return writer === acting || (!!here && writer === `${acting}@${here}`);
  }

  /** The peers, grouped under their hub when the mesh has several: this server's hub first. */
  private _peerItems(peers: readonly IPeer[]): HTMLElement[] {
    const hubs = [...new Set(peers.map(peer => peer.hub ?? ''))];
    if (hubs.length < 2) {
      return peers.map(peer => this._peerItem(peer));
    }
    const here = peers.find(peer => peer.local !== false)?.hub ?? '';
    const others = hubs.filter(hub => hub !== here).sort((a, b) => a.localeCompare(b));
    return (here ? [here, ...others] : others).flatMap(hub => {
      const members = peers.filter(peer => (peer.hub ?? '') === hub);
      const label = hub === here ? `${hub} (this server)` : hub;
      const count = `${members.length} peer${members.length === 1 ? '' : 's'}`;
      return [
        h(
          'li',
          { class: 'jp-SpindelPanel-hub', 'data-hub': hub, title: `hub ${hub}: ${count}` },
          h('span', { class: 'jp-SpindelPanel-name' }, label),
          h('span', { class: 'jp-SpindelPanel-mark' }, count)
        ),
        ...members.map(peer => this._peerItem(peer))
      ];
    });
  }

  private _peerItem(peer: IPeer): HTMLElement {
    const kernel = this.currentKernel;
    const here = peer.local !== false;
    const isCurrent = here && !!peer.kernel && peer.kernel === kernel;
    const isSelf = here && peer.kind === 'ui' && peer.name === this._connection.name;
    const mark = isCurrent ? '(this notebook)' : isSelf ? '(this panel)' : here ? '' : `on ${peer.hub ?? '?'}`;
    const contexts = peer.contexts.length ? peer.contexts.join(', ') : 'none';
    const item = h(
      'li',
      {
        class: 'jp-SpindelPanel-item jp-SpindelPanel-peer',
        'data-peer': peer.name,
        title:
          `${peer.name} (${peer.kind})` +
          (peer.user ? `\nacting for user ${peer.user}` : '') +
          `\ncontexts served: ${contexts}\nconnected since ${peer.since}`
      },
      h(
        'div',
        { class: 'jp-SpindelPanel-line' },
        h('span', { class: 'jp-SpindelPanel-name' }, peer.name),
        mark && h('span', { class: 'jp-SpindelPanel-mark' }, mark),
        h('span', { class: 'jp-SpindelPanel-badge', 'data-kind': peer.kind }, peer.kind)
      ),
      h(
        'div',
        { class: 'jp-SpindelPanel-detail' },
        h('span', {}, peer.contexts.length ? `serves ${contexts}` : 'serves nothing'),
        ' · ',
        h('span', {}, `since ${timeOfDay(peer.since)}`)
      )
    );
    if (isCurrent) {
      item.classList.add('jp-mod-current');
    }
    return item;
  }

  private _topicItem(topic: ITopic): HTMLElement {
    const kind = kindLabel(topic.kind);
    const subscribers = `${topic.subscribers} subscriber${topic.subscribers === 1 ? '' : 's'}`;
    const readOnly = topic.others === 'read';
    const scope = topic.owner
      ? `\nuser ${topic.owner}'s: other users ${readOnly ? 'only read it' : 'write it too'}`
      : '';
    return h(
      'li',
      {
        class: 'jp-SpindelPanel-item jp-SpindelPanel-topic',
        'data-topic': topic.name,
        title: `${topic.name} (${kind})\n${topic.summary}\n${subscribers}, ${topic.size} bytes stored${scope}`
      },
      h(
        'div',
        { class: 'jp-SpindelPanel-line' },
        h('span', { class: 'jp-SpindelPanel-name' }, topic.name),
        ...(readOnly
          ? [h('span', { class: 'jp-SpindelPanel-scope' }, `${topic.owner ?? ''}'s, read-only to others`)]
          : []),
        h('span', { class: 'jp-SpindelPanel-badge', 'data-kind': topic.kind }, kind)
      ),
      h(
        'div',
        { class: 'jp-SpindelPanel-detail' },
        h('code', { class: 'jp-SpindelPanel-summary' }, topic.summary || '(empty)'),
        ' · ',
        h('span', { class: 'jp-SpindelPanel-subscribers' }, subscribers)
      )
    );
  }

  private _connection: SpindelConnection;
  private _tracker: INotebookTracker | null;
  private _notebook: NotebookPanel | null = null;
  private _status: HTMLElement;
  private _peerList: HTMLElement;
  private _topicList: HTMLElement;
  private _peerCount: HTMLElement;
  private _topicCount: HTMLElement;
  private _workspaceList: HTMLElement;
  private _workspaceCount: HTMLElement;
  private _actions: WorkspaceActions | null;
  private _selected: string | null = null;
  private _workspaceKey = '';
  private _leaseTimer = 0;
}

export namespace SpindelPanel {
  export interface IOptions {
    connection: SpindelConnection;
    tracker?: INotebookTracker | null;
    actions?: WorkspaceActions | null;
  }
}

/**
 * Workspaces in the lab: follow, fork, merge and claim as requests to the hub
 * over the panel's WebSocket, the merge-conflict dialog, and followed notebooks
 * that reload themselves.
 */
import { Dialog, InputDialog, Notification, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { IConflict, IWorkspace, SpindelConnection, SpindelRequestError } from './connection';

export type Strategy = 'ours' | 'theirs' | 'union';

/** The `spindel` metadata of a followed copy: `{following: NAME, head: HEAD}`. */
export interface IFollowing {
  following: string;
  head: string;
}

/** A followed copy's `spindel` metadata, or null for any other notebook. */
export function followingOf(panel: NotebookPanel): IFollowing | null {
  const model = panel.context.model;
  if (!model) {
    return null;
  }
  const meta = model.getMetadata('spindel') as Partial<IFollowing> | undefined;
  if (meta && typeof meta.following === 'string' && meta.following) {
    return { following: meta.following, head: typeof meta.head === 'string' ? meta.head : '' };
  }
  return null;
}

/** Whether the workspace's writer lease is held now (a connected holder renews it). */
export function activeOwner(workspace: IWorkspace, connected: (peer: string) => boolean): string | null {
  const owner = workspace.owner;
  if (owner && (connected(owner.peer) || owner.expires > Date.now() / 1000)) {
    return owner.peer;
  }
  return null;
}

function errorMessage(err: unknown): string {
  if (err instanceof SpindelRequestError || err instanceof Error) {
    return err.message;
  }
  return String(err);
}

/** The longest message a notification shows whole (JupyterLab cuts longer ones). */
const TOAST_CHARS = 140;

/** Tell that `what` failed: in full, or, when too long for a notification, with a Details button. */
export function toast(what: string, err: unknown): void {
  const message = `Spindel: could not ${what}: ${errorMessage(err)}`;
  if (message.length <= TOAST_CHARS) {
    Notification.error(message, { autoClose: 10000 });
    return;
  }
  Notification.error(`Spindel: could not ${what} (see Details)`, {
    autoClose: false,
    actions: [
      {
        label: 'Details',
        caption: 'Show the whole message',
        callback: () => void showErrorMessage(`Could not ${what}`, errorMessage(err))
      }
    ]
  });
}

/** The workspace actions, acting as the peer `actingPeer()` names (the hub checks that it may). */
export class WorkspaceActions {
  constructor(options: WorkspaceActions.IOptions) {
    this._connection = options.connection;
    this._docManager = options.docManager ?? null;
    this._tracker = options.tracker ?? null;
  }

  /**
   * Who acts: the current notebook's kernel peer when it is connected (leases
   * belong to kernel peers), else this panel's own ui peer.
   */
  actingPeer(): string {
    const kernel = this._tracker?.currentWidget?.sessionContext.session?.kernel?.id ?? '';
    const peer = kernel ? this._connection.peers.find(p => p.kernel === kernel) : undefined;
    return peer?.name ?? this._connection.name;
  }

  /** Follow `name`: the hub writes a read-only copy; open it. */
  async follow(name: string): Promise<void> {
    let descriptor: IWorkspace;
    try {
      descriptor = (await this._post(name, 'follow', {})) as IWorkspace;
    } catch (err) {
      toast(`follow '${name}'`, err);
      return;
    }
    const path = descriptor.copy ?? `following/${name}.ipynb`;
    this._open(path);
    Notification.success(`Spindel: following '${name}' in ${path} (read-only, updates itself)`, {
      autoClose: 4000
    });
  }

  /** Fork `name` under a new name (asked for); open the fork's notebook. */
  async fork(name: string): Promise<void> {
    const peer = this.actingPeer();
    const answer = await InputDialog.getText({
      title: `Fork '${name}'`,
      label: 'Name of the fork:',
      text: `${name}-${peer}`,
      okLabel: 'Fork'
    });
    const fork = answer.button.accept ? (answer.value ?? '').trim() : '';
    if (!fork) {
      return;
    }
    let descriptor: IWorkspace;
    try {
      // The hub answers once the fork's notebook is written.
      descriptor = (await this._post(name, 'fork', { new: fork })) as IWorkspace;
    } catch (err) {
      toast(`fork '${name}'`, err);
      return;
    }
    const path = descriptor.path ?? `forks/${fork}.ipynb`;
    this._open(path);
    Notification.success(`Spindel: forked '${name}' as '${fork}' in ${path}`, { autoClose: 4000 });
  }

  /**
   * Merge the fork `name` back. A conflict changes nothing: the dialog shows
   * the conflicting cells and merges again only with the strategy chosen.
   */
  async merge(name: string): Promise<void> {
    let strategy: Strategy | undefined;
    for (;;) {
      let result: { merged?: boolean; head?: string; reason?: string };
      try {
        result = (await this._post(name, 'merge', strategy ? { strategy } : {})) as typeof result;
      } catch (err) {
        if (
          !strategy &&
          err instanceof SpindelRequestError &&
          err.code === 'merge_conflict' &&
          err.conflicts.length
        ) {
          strategy = await this._chooseStrategy(name, err);
          if (strategy) {
            continue;
          }
          return;
        }
        toast(`merge '${name}'`, err);
        return;
      }
      const parent = this._connection.workspaces.find(w => w.name === name)?.fork_of?.workspace ?? 'its workspace';
      if (result?.merged) {
        Notification.success(
          `Spindel: merged '${name}' into '${parent}'${strategy ? ` (${strategy})` : ''}; new head ${String(result.head ?? '').slice(0, 12)}`,
          { autoClose: 5000 }
        );
      } else {
        Notification.info(`Spindel: nothing merged: ${result?.reason ?? 'no changes'}`, { autoClose: 5000 });
      }
      return;
    }
  }

  /** Take the writer lease of `name` (one that ended). */
  async claim(name: string): Promise<void> {
    const peer = this.actingPeer();
    try {
      await this._post(name, 'claim', {});
    } catch (err) {
      toast(`claim '${name}'`, err);
      return;
    }
    Notification.success(`Spindel: ${peer} now writes '${name}'`, { autoClose: 4000 });
  }

  private async _chooseStrategy(fork: string, error: SpindelRequestError): Promise<Strategy | undefined> {
    const parent = this._connection.workspaces.find(w => w.name === fork)?.fork_of?.workspace ?? 'workspace';
    const buttons = [
      Dialog.cancelButton({ label: 'Cancel' }),
      Dialog.createButton({
        label: 'Ours',
        caption: `Keep ${parent}'s version of each conflicting cell`,
        className: 'jp-SpindelMerge-ours'
      }),
      Dialog.createButton({
        label: 'Theirs',
        caption: `Take ${fork}'s version of each conflicting cell`,
        className: 'jp-SpindelMerge-theirs'
      }),
      Dialog.okButton({
        label: 'Union',
        caption: `Keep both: ${parent}'s cell, then ${fork}'s`,
        className: 'jp-SpindelMerge-union'
      })
    ];
    const result = await showDialog({
      title: `Merge '${fork}' into '${parent}': ${error.conflicts.length} conflicting cell${error.conflicts.length === 1 ? '' : 's'}`,
      body: new ConflictView(error, parent, fork),
      buttons,
      defaultButton: 0
    });
    const label = result.button.label.toLowerCase();
    return ['ours', 'theirs', 'union'].includes(label) ? (label as Strategy) : undefined;
  }

  /** Ask the hub for workspace operation `action` on `name`, as the acting peer. */
  private _post(name: string, action: string, body: { [key: string]: unknown }): Promise<unknown> {
    const peer = this.actingPeer();
    const as = peer === this._connection.name ? {} : { as: peer };
    return this._connection.call(`workspace.${action}`, { ...body, ...as, name });
  }

  private _open(path: string): void {
    if (!this._docManager) {
      Notification.info(`Spindel: open ${path} from the file browser`, { autoClose: 5000 });
      return;
    }
    this._docManager.openOrReveal(path);
  }

  private _connection: SpindelConnection;
  private _docManager: IDocumentManager | null;
  private _tracker: INotebookTracker | null;
}

export namespace WorkspaceActions {
  export interface IOptions {
    connection: SpindelConnection;
    docManager?: IDocumentManager | null;
    tracker?: INotebookTracker | null;
  }
}

/** The body of the merge-conflict dialog: each conflicting cell, base / ours / theirs side by side. */
class ConflictView extends Widget {
  constructor(error: SpindelRequestError, parent: string, fork: string) {
    super();
    this.addClass('jp-SpindelMerge');
    const intro = document.createElement('p');
    intro.className = 'jp-SpindelMerge-intro';
    intro.textContent =
      `The hub reports: ${error.message}. Pick how to settle the cells below: ` +
      `Ours keeps ${parent}'s version, Theirs takes ${fork}'s, Union keeps both (${parent}'s first). ` +
      'Cancel leaves both workspaces as they are.';
    this.node.append(intro);
    for (const conflict of error.conflicts) {
      this.node.append(this._conflict(conflict, parent, fork));
    }
  }

  private _conflict(conflict: IConflict, parent: string, fork: string): HTMLElement {
    const section = document.createElement('section');
    section.className = 'jp-SpindelMerge-conflict';
    section.dataset.cell = conflict.id ?? '';
    const title = document.createElement('h3');
    title.className = 'jp-SpindelMerge-cellTitle';
    title.textContent = `Cell ${conflict.index + 1}${conflict.id ? ` (${conflict.id})` : ''}`;
    const grid = document.createElement('div');
    grid.className = 'jp-SpindelMerge-sides';
    const sides: [string, string, string | null][] = [
      ['base', 'base (when forked)', conflict.base],
      ['ours', `ours (${parent})`, conflict.ours],
      ['theirs', `theirs (${fork})`, conflict.theirs]
    ];
    for (const [key, label, source] of sides) {
      const column = document.createElement('div');
      column.className = `jp-SpindelMerge-side jp-SpindelMerge-${key}`;
      const heading = document.createElement('div');
      heading.className = 'jp-SpindelMerge-sideTitle';
      heading.textContent = label;
      const pre = document.createElement('pre');
      pre.className = 'jp-SpindelMerge-source';
      if (source === null || source === undefined) {
        pre.classList.add('jp-mod-deleted');
        pre.textContent = '(deleted)';
      } else {
        pre.textContent = source;
      }
      column.append(heading, pre);
      grid.append(column);
    }
    section.append(title, grid);
    return section;
  }
}

/** The toolbar badge of a followed copy. */
class FollowingBadge extends Widget {
  constructor() {
    super({ node: document.createElement('span') });
    this.addClass('jp-SpindelFollowing');
    this.node.setAttribute('role', 'status');
  }

  set name(name: string) {
    this.node.textContent = `Following ${name} - read-only`;
    this.node.title = `A read-only copy of the workspace '${name}': it reloads itself at every new head.`;
  }
}

/**
 * Followed copies: a read-only badge in their toolbar, and a reload from disk
 * whenever the hub pushes a new head of their workspace (it announces a head
 * only once its copies are written).
 */
export class FollowedNotebooks {
  constructor(connection: SpindelConnection, tracker: INotebookTracker) {
    this._connection = connection;
    tracker.widgetAdded.connect((_, panel) => this._add(panel));
    tracker.forEach(panel => this._add(panel));
    connection.workspacesChanged.connect(this._sync, this);
  }

  private _add(panel: NotebookPanel): void {
    void panel.context.ready.then(() => {
      if (panel.isDisposed) {
        return;
      }
      const badge = new FollowingBadge();
      badge.hide();
      panel.toolbar.insertItem(0, 'spindel-following', badge);
      this._panels.set(panel, badge);
      panel.disposed.connect(() => this._panels.delete(panel));
      panel.context.model.metadataChanged.connect(() => this._refreshBadge(panel));
      this._refreshBadge(panel);
      this._check(panel);
    });
  }

  private _refreshBadge(panel: NotebookPanel): void {
    const badge = this._panels.get(panel);
    if (!badge) {
      return;
    }
    const following = followingOf(panel);
    if (following) {
      badge.name = following.following;
      badge.show();
      panel.addClass('jp-SpindelFollowed');
    } else {
      badge.hide();
      panel.removeClass('jp-SpindelFollowed');
    }
  }

  private _sync(): void {
    for (const panel of this._panels.keys()) {
      this._check(panel);
    }
  }

  /** Reload `panel` from disk when its workspace has moved on. */
  private _check(panel: NotebookPanel): void {
    const following = followingOf(panel);
    if (!following || panel.isDisposed || this._reloading.has(panel)) {
      return;
    }
    const workspace = this._connection.workspaces.find(w => w.name === following.following);
    if (!workspace || workspace.head === following.head) {
      return;
    }
    const target = workspace.head;
    this._reloading.add(panel);
    panel.context
      .revert()
      .catch(err => console.warn(`spindel: could not reload ${panel.context.path}`, err))
      .finally(() => {
        this._reloading.delete(panel);
        // A newer head announced while this one was read: read that one too.
        const latest = this._connection.workspaces.find(w => w.name === following.following);
        if (latest && latest.head !== target) {
          this._check(panel);
        }
      });
  }

  private _connection: SpindelConnection;
  private _panels = new Map<NotebookPanel, FollowingBadge>();
  private _reloading = new Set<NotebookPanel>();
}
